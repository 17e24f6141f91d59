//! The broker conversation without I/O: requests become bytes to write, bytes read become
//! responses, and the session checks that every response fits the request in flight.
//!
//! Both drivers ([`crate::blocking`], and `crate::tokio_driver` with the `tokio` feature)
//! own a socket and a [`Session`]; everything about the protocol is decided here, so it is
//! tested byte by byte without a socket (partial frames, several frames in one read, an
//! oversized length, a snapshot stream, an error ending a stream) and fuzzed the same way.
//!
//! The conversation is strictly one request at a time, as the broker serves it:
//!
//! ```text
//! Fresh --hello()--> Greeting --Hello reply--> Ready --request()--> Awaiting(verb)
//!                                                ^                     | Count / Killed / Error
//!                                                +---------------------+
//!                    Ready --request(Snapshot)--> Streaming --Batch--> Streaming
//!                                                           --Done / Error--> Ready
//! ```
//!
//! A response that does not fit (a `Count` answering a kill, anything while nothing was
//! asked), a frame that does not decode, or a refused `Hello` leaves the session `Broken`:
//! the connection can no longer be trusted to be in step, and the caller must drop it. A
//! refused request (an `Error` answer after the Hello) is not a break: the broker keeps the
//! connection open, and so does the session.

use statecull_proto::frame::{FrameAssembler, decode_response, encode_request};
use statecull_proto::{HelloReply, MAX_CLIENT_NAME_LEN, PROTOCOL_VERSION, Request, Response, Verb};

use crate::error::ClientError;

/// Where the conversation stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Nothing sent yet: the first request must be the Hello.
    Fresh,
    /// The Hello is out, its answer due.
    Greeting,
    /// Greeted, nothing in flight: a request may be sent.
    Ready,
    /// One request out (not a snapshot), its single answer due.
    Awaiting(Verb),
    /// A snapshot out: batches, then `SnapshotDone`, are due.
    Streaming,
    /// Out of step (a bad or unexpected answer, a refused Hello): drop the connection.
    Broken,
}

/// One connection's conversation with the broker, without the connection.
#[derive(Debug)]
pub struct Session {
    frames: FrameAssembler,
    /// Bytes received and not yet taken by `frames` (the start of later frames, when one
    /// read brought more than the current frame).
    input: Vec<u8>,
    state: State,
    hello: Option<HelloReply>,
}

impl Default for Session {
    fn default() -> Self {
        Self::new()
    }
}

impl Session {
    pub fn new() -> Self {
        Session {
            frames: FrameAssembler::new(),
            input: Vec::new(),
            state: State::Fresh,
            hello: None,
        }
    }

    /// The frame to send first: a `Hello` naming this client (clipped to
    /// [`MAX_CLIENT_NAME_LEN`] characters) in the broker's audit log.
    pub fn hello(&mut self, client: &str) -> Result<Vec<u8>, ClientError> {
        if self.state != State::Fresh {
            return Err(self.out_of_step("a second Hello on one connection"));
        }
        let name: String = client.chars().take(MAX_CLIENT_NAME_LEN).collect();
        let frame = encode_request(&Request::Hello(statecull_proto::Hello {
            protocol_version: PROTOCOL_VERSION,
            client: name,
        }))?;
        self.state = State::Greeting;
        Ok(frame)
    }

    /// The frame for one request (not a `Hello`): only once greeted, and only when the
    /// previous request has had its whole answer.
    pub fn request(&mut self, req: &Request) -> Result<Vec<u8>, ClientError> {
        match self.state {
            State::Ready => {}
            State::Fresh | State::Greeting => {
                return Err(self.out_of_step("a request before the broker answered the Hello"));
            }
            State::Awaiting(_) | State::Streaming => {
                return Err(self.out_of_step(
                    "a request while the previous one is unanswered (abandoned half-way?)",
                ));
            }
            State::Broken => return Err(self.out_of_step("a request on a broken conversation")),
        }
        let verb = req.verb();
        if verb == Verb::Hello {
            return Err(self.out_of_step("a second Hello on one connection"));
        }
        let frame = encode_request(req)?;
        self.state = if verb == Verb::Snapshot { State::Streaming } else { State::Awaiting(verb) };
        Ok(frame)
    }

    /// Bytes read from the connection, in any pieces: a frame may be split across calls, and
    /// one call may bring several frames. Decoded by [`Self::next_response`].
    pub fn receive(&mut self, bytes: &[u8]) {
        self.input.extend_from_slice(bytes);
    }

    /// The next complete response, if the bytes received so far hold one (`None`: read
    /// more). Never an `Error` response: a refusal is [`ClientError::Refused`]. Every
    /// response returned fits the request in flight; the exchange is over once
    /// [`Self::is_idle`] (a snapshot's batches leave it streaming until `SnapshotDone`).
    pub fn next_response(&mut self) -> Result<Option<Response>, ClientError> {
        let Some(payload) = self.next_frame()? else { return Ok(None) };
        let response = match decode_response(&payload) {
            Ok(r) => r,
            Err(e) => {
                self.state = State::Broken;
                return Err(ClientError::Protocol(e));
            }
        };
        self.accept(response).map(Some)
    }

    /// True when no answer is due: nothing sent yet, or every answer read.
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Fresh | State::Ready)
    }

    /// True once the conversation is out of step: the connection must be dropped.
    pub fn is_broken(&self) -> bool {
        self.state == State::Broken
    }

    /// The broker's answer to the Hello, once received.
    pub fn hello_reply(&self) -> Option<&HelloReply> {
        self.hello.as_ref()
    }

    /// Feed buffered input to the assembler until it holds a whole frame.
    fn next_frame(&mut self) -> Result<Option<Vec<u8>>, ClientError> {
        loop {
            let pushed = self.frames.push(&self.input);
            let taken = match pushed {
                Ok(n) => n,
                Err(e) => {
                    // An impossible length (zero, or above the frame limit): nothing after
                    // it can be framed any more.
                    self.state = State::Broken;
                    self.input.clear();
                    return Err(ClientError::Protocol(e));
                }
            };
            self.input.drain(..taken);
            match self.frames.next_frame() {
                Ok(Some(payload)) => return Ok(Some(payload)),
                Ok(None) if self.input.is_empty() => return Ok(None),
                Ok(None) => {}
                Err(e) => {
                    self.state = State::Broken;
                    return Err(ClientError::Protocol(e));
                }
            }
        }
    }

    /// Check a decoded response against the state and move on.
    fn accept(&mut self, response: Response) -> Result<Response, ClientError> {
        match (self.state, response) {
            (State::Greeting, Response::Error(e)) => {
                // A broker that refuses a peer closes the connection after saying why.
                self.state = State::Broken;
                Err(ClientError::Refused(e))
            }
            (State::Awaiting(_) | State::Streaming, Response::Error(e)) => {
                // A refused request: the broker keeps the connection.
                self.state = State::Ready;
                Err(ClientError::Refused(e))
            }
            (State::Greeting, Response::Hello(h)) => {
                self.hello = Some(h.clone());
                self.state = State::Ready;
                Ok(Response::Hello(h))
            }
            (State::Awaiting(Verb::Count), r @ Response::Count(_)) => {
                self.state = State::Ready;
                Ok(r)
            }
            (
                State::Awaiting(Verb::KillMatching | Verb::KillHandles | Verb::Flush),
                r @ Response::Killed(_),
            ) => {
                self.state = State::Ready;
                Ok(r)
            }
            (State::Awaiting(Verb::RulesetTicket), r @ Response::RulesetTicket(_)) => {
                self.state = State::Ready;
                Ok(r)
            }
            (State::Streaming, r @ Response::SnapshotBatch(_)) => Ok(r),
            (State::Streaming, r @ Response::SnapshotDone(_)) => {
                self.state = State::Ready;
                Ok(r)
            }
            (state, other) => {
                self.state = State::Broken;
                Err(ClientError::Unexpected(match state {
                    State::Greeting => format!("{other:?} to Hello"),
                    State::Awaiting(Verb::Count) => format!("{other:?} to Count"),
                    State::Awaiting(verb) => format!("{other:?} to {verb}"),
                    State::Streaming => format!("{other:?} in a snapshot"),
                    State::Fresh | State::Ready | State::Broken => {
                        format!("{other:?} while no request was pending")
                    }
                }))
            }
        }
    }

    fn out_of_step(&mut self, what: &str) -> ClientError {
        self.state = State::Broken;
        ClientError::OutOfStep(what.to_owned())
    }
}
