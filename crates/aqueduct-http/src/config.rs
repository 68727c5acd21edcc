//! How a server listens, what it accepts and what its routes speak.

use aqueduct_core::kserve::Repository;
use bytes::Bytes;
use std::net::SocketAddr;
use std::time::Duration;

use aqueduct_core::openai::Endpoint;

use crate::access_log::Destination;
use crate::auth::ApiKeys;

/// How the server listens and what it accepts.
#[derive(Debug, Clone)]
pub struct Config {
    pub addr: SocketAddr,
    /// The paths requests for the flow are sent to, one per route: a
    /// request tells the workers which by its index (`/health` and
    /// `/metrics` are the server's).
    pub paths: Vec<String>,
    /// A request's default timeout (the header can set its own).
    pub timeout: Duration,
    /// Largest request body accepted (413 beyond).
    pub body_limit: usize,
    /// Threads of the runtime that runs connections.
    pub threads: usize,
    /// How long a client may take to send a request's head, from its
    /// first byte (or from connecting): a connection that has not sent it
    /// by then is closed.
    pub header_timeout: Duration,
    /// How long a keep-alive connection may stay idle after an answer
    /// before it is closed.
    pub idle_timeout: Duration,
    /// How long writing an answer may wait for the client to read before
    /// the connection is closed.
    pub write_timeout: Duration,
    /// Where a line per answered request goes (None: nowhere).
    pub access_log: Option<Destination>,
    /// The keys a request must carry one of (none: no key is needed);
    /// `/health` never needs one.
    pub api_keys: ApiKeys,
    /// `/metrics` needs no key even when the others do.
    pub open_metrics: bool,
    /// What `GET /openapi.json` answers (None: 404).
    pub openapi: Option<Bytes>,
    /// Most connections open at once (beyond: they wait to be accepted).
    pub max_connections: usize,
    /// How long a request's body may take to come (408 beyond).
    pub body_timeout: Duration,
    /// Per route (as `paths`): the content type of its streamed responses,
    /// or None for a route that answers once (see `stream`).
    pub streams: Vec<Option<String>>,
    /// Listen with `SO_REUSEPORT`: another server (a new version) may
    /// listen on the same port while this one drains.
    pub reuse_port: bool,
    /// Keep what each answered request's spans need (see `trace`).
    pub trace: bool,
    /// Per route (as `paths`): the API it speaks (none: all plain).
    pub protocols: Vec<Protocol>,
    /// The model the OpenAI-compatible routes serve (`/v1/models` lists it).
    pub model: Option<String>,
    /// How often an idle OpenAI-compatible stream gets a `: ping` comment.
    pub ping: Duration,
    /// The models served over the Open Inference Protocol (`/v2/...`).
    pub kserve: Repository,
}

/// What a route speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Whatever its route's functions make of requests and tasks.
    Plain,
    OpenAi(Endpoint),
    /// `/v1/embeddings`.
    Embeddings,
}
