//! Arbitrary bytes as a packed libnv nvlist (what pf would read from userland, or userland
//! from pf). Nothing may panic; whatever unpacks must re-pack, in both byte orders, to the
//! same length and unpack to the same value; the kernel's kill-request decoding must be
//! total, and a request it accepts must survive kill_request -> decoding unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use statecull_pf::nv::{Nvlist, kill_from_request, kill_request, parse_killed_reply};

fuzz_target!(|data: &[u8]| {
    let Ok(nvl) = Nvlist::unpack(data) else {
        return;
    };
    // Every length the unpacker accepts is fixed by the content, so the packer reproduces
    // the input's length (only NVLIST/NVLIST_ARRAY datasize values may differ).
    let le = nvl.pack().expect("an unpacked nvlist packs");
    assert_eq!(le.len(), data.len());
    assert_eq!(le.len(), nvl.packed_len());
    assert_eq!(Nvlist::unpack(&le).expect("a re-packed nvlist unpacks"), nvl);
    let be = nvl.pack_big_endian().expect("an unpacked nvlist packs big-endian");
    assert_eq!(be.len(), le.len());
    assert_eq!(Nvlist::unpack(&be).expect("a big-endian packing unpacks"), nvl);

    let _ = parse_killed_reply(&nvl);
    if let Ok(kill) = kill_from_request(&nvl) {
        let again = kill_request(&kill);
        let packed = again.pack().expect("a kill request packs");
        let back = Nvlist::unpack(&packed).expect("a packed kill request unpacks");
        assert_eq!(kill_from_request(&back), Ok(kill));
    }
});
