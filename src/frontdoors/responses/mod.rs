//! OpenAI's Responses API: `POST /v1/responses`.
//!
//! OpenAI and Azure deployments get the body untouched (`model` set to the
//! deployment's), streams included, and keep their state features
//! (`previous_response_id`, `store`, built-in tools). Every other provider
//! gets it through the chat form:
//!
//! # Requests ([`request`])
//!
//! | Responses API | chat completions |
//! |---|---|
//! | `instructions` | a first `system` message |
//! | `input` as a string | one `user` message |
//! | `input` items: `message` (or `{role, content}`), role `user` / `assistant` / `system` / `developer` | messages of that role (`developer` as `system`) |
//! | content parts `input_text` / `output_text` / `refusal` | `text` parts |
//! | `input_image` (`image_url`: a URL or a `data:` URL; `detail` kept) | `image_url` part (`file_id`: 400) |
//! | `input_file` with `file_data` | `file` part |
//! | `function_call` items (`call_id`, `name`, `arguments`) | `tool_calls` of one assistant message (with the text before them) |
//! | `function_call_output` items (`call_id`, `output`) | `tool` messages |
//! | `reasoning` items | left out |
//! | `tools[]` of type `function` (`name`, `description`, `parameters`, `strict`) | `tools[] {type: function, function: {…}}` |
//! | built-in tools (`web_search`, `file_search`, `code_interpreter`, …) | 400 naming `tools[i].type` |
//! | `tool_choice` `auto` / `none` / `required` / `{type: function, name}` | the same in chat's form |
//! | `parallel_tool_calls` | `parallel_tool_calls` |
//! | `text.format` `json_schema` (`name`, `schema`, `strict`, `description`) / `json_object` | `response_format` `json_schema` / `json_object` |
//! | `max_output_tokens`, `temperature`, `top_p`, `metadata` | `max_tokens`, `temperature`, `top_p`, `metadata` |
//! | `safety_identifier`, `user` | `user` |
//! | `previous_response_id`, `conversation`, `prompt`, `store: true`, `background: true`, `item_reference` items | 400 naming the parameter (state the provider does not keep) |
//! | `reasoning`, `include`, `truncation`, `service_tier`, `stream_options`, `prompt_cache_key` | ignored |
//!
//! # Answers ([`response`], [`stream`])
//!
//! | chat | Responses API |
//! |---|---|
//! | `content` (or `refusal`) | an output `message` item with one `output_text` part |
//! | `tool_calls[]` | output `function_call` items (`call_id` = the tool call id) |
//! | `finish_reason` `stop` / `tool_calls` | `status: completed` |
//! | `finish_reason` `length` / `content_filter` | `status: incomplete`, `incomplete_details.reason` `max_output_tokens` / `content_filter` |
//! | `usage.prompt_tokens` / `completion_tokens` | `usage.input_tokens` / `output_tokens` (`total_tokens` their sum) |
//! | `prompt_tokens_details.cached_tokens`, `completion_tokens_details.reasoning_tokens` | `input_tokens_details.cached_tokens`, `output_tokens_details.reasoning_tokens` |
//!
//! The translated answer does not echo the request's settings: `tools`,
//! `tool_choice`, `temperature`, `top_p`, `instructions`, `text` and
//! `metadata` show their defaults, and `store` is `false`. `GET
//! /v1/responses/{id}` is [`stored`]. Ids are Conduit's
//! (`resp_…`, `msg_…`, `fc_…` from the request id); a function call's
//! `call_id` is the provider's tool call id. Errors use OpenAI's envelope.

pub mod native;
pub mod request;
pub mod response;
pub mod stored;
pub mod stream;

#[cfg(test)]
mod tests;
