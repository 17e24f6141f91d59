//! FreeBSD: a WAN's addresses for `nat_addr = "interface"`, from `getifaddrs(3)` at start-up
//! (before confinement) and the routing socket's `RTM_NEWADDR`/`RTM_DELADDR` afterwards,
//! decoded by `rtsock::parse_addresses` (pure, tested on Linux) into the same address book
//! as Linux's rtnetlink watcher. If the kernel drops messages (`ENOBUFS`), the book cannot
//! be read afresh in capability mode: that is logged as an error and the book goes on from
//! the next message (a restart reads everything again).
//!
//! **Type-checked for FreeBSD only; never run on a FreeBSD kernel.**

#[cfg(target_os = "freebsd")]
pub use freebsd::AddressSocket;

#[cfg(target_os = "freebsd")]
mod freebsd {
    use std::net::IpAddr;

    use nix::errno::Errno;
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrLike, socket};
    use tokio::net::UnixDatagram;

    use crate::error::EngineError;
    use crate::routes::addrs::{AddrMsg, AddressBook};
    use crate::routes::rtsock;

    const RECV_BUF: usize = 16 * 1024;

    fn bad(what: impl Into<String>) -> EngineError {
        EngineError::Routes(what.into())
    }

    /// Not a NAT address: loopback, link-local, unspecified.
    fn local_only(a: IpAddr) -> bool {
        match a {
            IpAddr::V4(v) => v.is_loopback() || v.is_link_local() || v.is_unspecified(),
            IpAddr::V6(v) => {
                v.is_loopback() || v.is_unspecified() || v.segments()[0] & 0xffc0 == 0xfe80
            }
        }
    }

    /// The routing socket and the book it keeps.
    #[derive(Debug)]
    pub struct AddressSocket {
        sock: UnixDatagram,
        buf: Vec<u8>,
        book: AddressBook,
    }

    impl AddressSocket {
        /// Open the routing socket, then read every interface address (`getifaddrs`), at
        /// `now` (the caller's ms). Inside the tokio runtime, before confinement.
        pub fn open(now: u64) -> Result<AddressSocket, EngineError> {
            if tokio::runtime::Handle::try_current().is_err() {
                return Err(bad("AddressSocket::open must run inside the tokio runtime"));
            }
            let fd = socket(
                AddressFamily::Route,
                SockType::Raw,
                SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
                None,
            )
            .map_err(|e| bad(format!("open the routing socket for addresses: {e}")))?;
            let sock = UnixDatagram::from_std(std::os::unix::net::UnixDatagram::from(fd))
                .map_err(|e| bad(format!("register the routing socket: {e}")))?;
            let mut book = AddressBook::default();
            let addrs = nix::ifaddrs::getifaddrs()
                .map_err(|e| bad(format!("reading the interfaces' addresses: {e}")))?;
            for ifa in addrs {
                let Ok(index) = nix::net::if_::if_nametoindex(ifa.interface_name.as_str()) else {
                    continue;
                };
                book.apply(AddrMsg::Link { ifindex: index, name: ifa.interface_name.clone() }, now);
                let Some(sa) = ifa.address else { continue };
                let address = match (sa.as_sockaddr_in(), sa.as_sockaddr_in6()) {
                    (Some(v4), _) => IpAddr::V4(v4.ip()),
                    (_, Some(v6)) => IpAddr::V6(v6.ip()),
                    _ => continue,
                };
                if sa.family().is_some() && !local_only(address) {
                    book.apply(AddrMsg::Added { ifindex: index, label: None, address }, now);
                }
            }
            Ok(AddressSocket { sock, buf: vec![0; RECV_BUF], book })
        }

        /// Wait for the next routing message and apply the address changes it holds.
        pub async fn changed(&mut self, now: impl Fn() -> u64) -> Result<(), EngineError> {
            loop {
                match self.sock.recv(&mut self.buf).await {
                    Ok(n) => {
                        let got = self.buf.get(..n).unwrap_or_default();
                        let msgs = rtsock::parse_addresses(got).map_err(|e| bad(e.to_string()))?;
                        let at = now();
                        for m in msgs {
                            self.book.apply(m, at);
                        }
                        self.book.expire(at);
                        return Ok(());
                    }
                    Err(e) if e.raw_os_error() == Some(Errno::ENOBUFS as i32) => {
                        tracing::error!(
                            "the routing socket dropped messages: interface addresses may be \
                             stale until the next change (restart the engine to read them all)"
                        );
                        return Ok(());
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(bad(format!("routing socket read: {e}"))),
                }
            }
        }

        pub fn book(&self) -> &AddressBook {
            &self.book
        }
    }
}
