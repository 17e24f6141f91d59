//! What the kernel sends the engine's address watcher (`nat_addr = "interface"`): received
//! rtnetlink buffers of link and address messages (`RTM_NEWLINK`/`RTM_DELLINK`,
//! `RTM_NEWADDR`/`RTM_DELADDR`), decoded and applied to an address book as the watcher does
//! (`routes::addrs::fuzzing::decode`). Nothing may panic; every interface's addresses are
//! distinct; what is selectable includes what is current, without repeats, and nothing
//! departed past the retention.
#![no_main]

use libfuzzer_sys::fuzz_target;
use statecull_engine::routes::addrs::{RETAIN_MS, fuzzing::decode};

fuzz_target!(|data: &[u8]| {
    let Ok((book, _done)) = decode(data, None) else { return };
    for name in ["eth0", "ppp0", "wan0", "lo"] {
        let current = book.current(name);
        let selectable = book.selectable(name, 0);
        for (i, a) in selectable.iter().enumerate() {
            assert!(!selectable[..i].contains(a), "{a} twice for {name}");
        }
        assert!(current.iter().all(|a| selectable.contains(a)));
        let later = book.selectable(name, RETAIN_MS);
        assert!(
            later.iter().all(|a| current.contains(a)),
            "{name}: a departure outlived the retention"
        );
    }
});
