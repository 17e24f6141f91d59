//! What a broker can send a client, read as the client reads it: arbitrary bytes, cut into
//! pieces (the first byte picks the piece size and the requests), fed to
//! `statecull_client::Session` after its Hello, with a request sent whenever the session is
//! idle. Nothing may panic. Every response returned fits what was asked (the Hello's answer
//! to the Hello, a count to a count, batches then done to a snapshot), never an `Error`
//! (that is a refusal); after a whole answer the session is idle; a refused request leaves
//! it usable, anything else that fails leaves it broken, refusing the next request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use statecull_client::{ClientError, Session};
use statecull_proto::{Request, Response, Selector, Verb};

const PIECES: [usize; 5] = [1, 3, 7, 64, 4096];

fn request(n: usize) -> Request {
    let sel = Selector { mark: "1".parse().ok(), ..Selector::default() };
    match n % 5 {
        0 => Request::Count { selectors: vec![sel] },
        1 => Request::Snapshot { selector: None },
        2 => Request::KillMatching { selectors: vec![sel], match_opposite: false },
        3 => Request::RulesetTicket,
        _ => Request::Flush { interface: None },
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, bytes)) = data.split_first() else { return };
    let piece = PIECES[usize::from(first) % PIECES.len()];
    let mut asked = usize::from(first / 5);
    let mut s = Session::new();
    s.hello("fuzz").expect("a fresh session says hello");
    let mut in_flight: Option<Verb> = Some(Verb::Hello);
    for chunk in bytes.chunks(piece) {
        s.receive(chunk);
        loop {
            match s.next_response() {
                Ok(None) => break,
                Ok(Some(r)) => {
                    let verb = in_flight.expect("no answer while nothing is asked");
                    let fits = match (&r, verb) {
                        (Response::Hello(_), Verb::Hello) | (Response::Count(_), Verb::Count) => {
                            true
                        }
                        (Response::Killed(_), Verb::KillMatching | Verb::Flush)
                        | (Response::RulesetTicket(_), Verb::RulesetTicket) => true,
                        (
                            Response::SnapshotBatch(_) | Response::SnapshotDone(_),
                            Verb::Snapshot,
                        ) => true,
                        _ => false,
                    };
                    assert!(fits, "{r:?} returned to {verb}");
                    if matches!(r, Response::SnapshotBatch(_)) {
                        assert!(!s.is_idle(), "a batch leaves the snapshot streaming");
                        continue;
                    }
                    assert!(s.is_idle() && !s.is_broken());
                    let req = request(asked);
                    asked += 1;
                    s.request(&req).expect("an idle session takes a request");
                    in_flight = Some(req.verb());
                }
                Err(ClientError::Refused(_)) if in_flight != Some(Verb::Hello) => {
                    assert!(s.is_idle() && !s.is_broken(), "a refusal keeps the connection");
                    let req = request(asked);
                    asked += 1;
                    s.request(&req).expect("a refused request leaves the session usable");
                    in_flight = Some(req.verb());
                }
                Err(_) => {
                    assert!(s.is_broken(), "a failure breaks the conversation");
                    assert!(s.request(&request(0)).is_err(), "a broken session sends nothing");
                    return;
                }
            }
        }
    }
});
