//! What the fuzz targets share: one configuration with a deployment of
//! every provider kind, the ways a body is cut into reads, and the
//! invariants each kind of parser must keep beyond "does not panic".
//!
//! | module        | checks                                                        |
//! |---------------|---------------------------------------------------------------|
//! | [`setup`]     | the providers and the gateway over in-memory ports            |
//! | [`cuts`]      | the same bytes cut into reads in several ways                 |
//! | [`framing`]   | SSE and eventstream: split-invariant, against a reference parser, re-encoding round trip, bounded buffer |
//! | [`decoders`]  | stream decoders (split-invariant, well-formed chunks) and whole-answer translation |
//! | [`inputs`]    | key extraction, admin key bodies, the config document         |
//! | [`mutate`]    | a JSON-aware mutator: one value of a valid document changed (edge numbers, type swaps, keys removed) |
//! | [`pipeline`]  | a whole request through the gateway: status, error shape, SSE framing, one usage record |
//! | [`scan`]      | the raw request scan against the tree parse: the same fields, the same estimate |

pub mod cuts;
pub mod decoders;
pub mod framing;
pub mod inputs;
pub mod mutate;
pub mod pipeline;
pub mod scan;
pub mod setup;
