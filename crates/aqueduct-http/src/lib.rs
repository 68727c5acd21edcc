//! An HTTP/1.1 front for a flow, with no Python per request.
//!
//! Each request's bytes go straight into the first step's queue as one
//! message (`KIND_HTTP_REQUEST`, see `aqueduct_core::http_wire`); the
//! workers make a task of it, handle it, and answer through this server's
//! result queue (`KIND_HTTP_RESPONSE`, or an error report whose summary
//! gives the status). A reader thread hands each answer to the request
//! waiting for it. The server only needs the fds of those two queues and of
//! the control block (to cancel requests that timed out).

mod access_log;
mod answer;
mod auth;
mod awaiting;
mod config;
mod connection;
mod delivered;
mod dispatch;
mod frames;
mod framing;
mod json_errors;
mod kserve_route;
mod metrics;
mod openai_route;
mod readiness;
mod request_id;
mod server;
mod service;
mod shared;
mod stream;
mod timed_connection;
mod trace;

pub use access_log::Destination;
pub use auth::ApiKeys;
pub use config::{Config, Protocol};
pub use metrics::Names;
pub use openai_route::DEFAULT_PING;
pub use readiness::Phase;
pub use server::Server;
pub use shared::Target;
pub use trace::{Finished, Traces};
