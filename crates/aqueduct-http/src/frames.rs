//! How a streamed response frames what comes from the workers: as the
//! worker made it (`Raw`: its part function wrote the chunk, a failure is a
//! Server-Sent Event of type `error`), or as the OpenAI-compatible API's
//! chunks (`OpenAi`: a part is text, the end a summary, see
//! `aqueduct_core::openai`).

use aqueduct_core::http_wire::{error_event, server_sent_event};
use aqueduct_core::openai::{self, Framer, Summary};

pub enum Frames {
    Raw,
    OpenAi {
        framer: Box<Framer>,
        include_usage: bool,
    },
}

impl Frames {
    /// A part's chunk.
    pub fn part(&mut self, part: &[u8]) -> Option<Vec<u8>> {
        match self {
            Frames::Raw => None, // written as it is
            Frames::OpenAi { framer, .. } => Some(framer.part(part)),
        }
    }

    /// The last chunk: what the task's response body makes of it.
    pub fn last(&mut self, body: &[u8]) -> Vec<u8> {
        match self {
            Frames::Raw => body.to_vec(),
            Frames::OpenAi {
                framer,
                include_usage,
            } => match Summary::decode(body) {
                Some(summary) => framer.end(&summary, *include_usage),
                None => Framer::error("the worker's summary is not well-formed", "server_error"),
            },
        }
    }

    /// The event of a worker's error report (its JSON, and the status it
    /// stands for).
    pub fn failed(&self, json: &[u8], status: u16) -> Vec<u8> {
        match self {
            Frames::Raw => {
                let mut out = b"event: error\n".to_vec();
                out.extend_from_slice(&server_sent_event(json));
                out
            }
            Frames::OpenAi { .. } => {
                let mut out = b"data: ".to_vec();
                out.extend_from_slice(&openai::from_report(json, status));
                out.extend_from_slice(b"\n\n");
                out
            }
        }
    }

    /// The event of an error of the front's (`kind`: aqueduct's name of it).
    pub fn error(&self, message: &str, kind: &str) -> Vec<u8> {
        match self {
            Frames::Raw => error_event(message, kind),
            Frames::OpenAi { .. } => Framer::error(message, "server_error"),
        }
    }

    /// Whether an idle stream is sent comments to keep it open.
    pub fn pings(&self) -> bool {
        matches!(self, Frames::OpenAi { .. })
    }
}
