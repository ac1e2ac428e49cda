//! Anthropic's Messages API: `POST /v1/messages` and
//! `POST /v1/messages/count_tokens`.
//!
//! The virtual key comes as `x-api-key` (what the Anthropic SDKs and Claude
//! Code send) or `Authorization: Bearer`; `anthropic-version` and
//! `anthropic-beta` are accepted. Anthropic deployments and Claude models on
//! Bedrock get the body untouched (`model` set to the deployment's); every
//! other provider gets it through the chat form:
//!
//! # Requests ([`request`])
//!
//! | Messages API | chat completions |
//! |---|---|
//! | `system` (string, or text blocks) | a first `system` message (string, or text parts; `cache_control` kept) |
//! | `user` text / `image` (base64 → `data:` URL, or `url`) / `document` (base64 PDF) blocks | `user` message parts `text` / `image_url` / `file` |
//! | `user` `tool_result` blocks (text or image content; `is_error` prefixes `Error: `) | `tool` messages, before the rest of that user turn |
//! | `assistant` `text` / `tool_use` blocks | `assistant` `content` / `tool_calls` (`input` serialised as `arguments`) |
//! | `thinking` / `redacted_thinking` blocks | left out (the chat form has no place for them) |
//! | `tools[] {name, description, input_schema}` | `tools[] {type: function, function: {name, description, parameters}}` |
//! | server tools (`tools[].type` other than `custom`) | 400 naming `tools[i].type` |
//! | `tool_choice` `auto` / `any` / `tool` / `none` | `auto` / `required` / `{type: function, function: {name}}` / `none` |
//! | `tool_choice.disable_parallel_tool_use: true` | `parallel_tool_calls: false` |
//! | `max_tokens` (required), `temperature`, `top_p`, `stop_sequences` | `max_tokens`, `temperature`, `top_p`, `stop` |
//! | `metadata.user_id` | `user` |
//! | `output_config.format` (`json_schema`) | `response_format` `json_schema` (the answer's text is the JSON) |
//! | `top_k`, `container`, `mcp_servers` | 400 naming the parameter, or dropped with `drop_unsupported_params` |
//! | `thinking`, `output_config.effort`, `cache_control` (top level), `service_tier`, `speed`, `inference_geo`, `diagnostics`, `context_management`, `user_profile_id`, `workspace_id` | ignored: they tune Anthropic's own service, not what the model is asked |
//!
//! # Answers ([`response`], [`stream`])
//!
//! | chat | Messages API |
//! |---|---|
//! | `content` (or `refusal`) | one `text` block |
//! | `tool_calls[]` | `tool_use` blocks (`arguments` parsed into `input`) |
//! | `finish_reason` `stop` / `length` / `tool_calls` / `content_filter` | `stop_reason` `end_turn` / `max_tokens` / `tool_use` / `refusal` (`stop_sequence` is never named: the chat form does not say which stop sequence matched) |
//! | `usage.prompt_tokens` − cached − cache writes, `completion_tokens` | `usage.input_tokens`, `output_tokens` |
//! | `prompt_tokens_details.cached_tokens` / `.cache_write_tokens` | `cache_read_input_tokens` / `cache_creation_input_tokens` |
//!
//! Errors: [`errors`].

pub mod count;
pub mod errors;
pub mod native;
pub mod request;
pub mod response;
pub mod stream;

#[cfg(test)]
mod tests;
