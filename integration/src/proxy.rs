//! A TCP fault proxy for one direction of a peer link.
//!
//! Node A reaches node B's peer port through the proxy for (A, B); the test
//! can cut that link at any time: while it is blocked, open connections are
//! closed and new ones are closed as soon as they are accepted, so A's link
//! task keeps reconnecting and failing, as it would across a real partition.
//! Blocking (A, B) but not (B, A) is a one-way partition.

use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A running fault proxy: forwards every connection to its target until
/// blocked. Dropping it blocks it and stops accepting.
pub struct LinkProxy {
    addr: String,
    blocked: Arc<watch::Sender<bool>>,
    accept_task: JoinHandle<()>,
}

impl LinkProxy {
    /// Listens on `listen` (an address with a free port) and forwards to `target`.
    pub async fn start(listen: &str, target: String) -> std::io::Result<LinkProxy> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?.to_string();
        let (blocked, _) = watch::channel(false);
        let blocked = Arc::new(blocked);
        let state = blocked.clone();
        let accept_task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let mut cut = state.subscribe();
                if *cut.borrow() {
                    drop(inbound);
                    continue;
                }
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&target).await else {
                        return;
                    };
                    let mut inbound = inbound;
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.wait_for(|&blocked| blocked) => {}
                    }
                    let _ = inbound.shutdown().await;
                    let _ = outbound.shutdown().await;
                });
            }
        });
        Ok(LinkProxy {
            addr,
            blocked,
            accept_task,
        })
    }

    /// The address it listens on (with the port the kernel chose, for a `:0` listen address).
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Cuts the link: closes the open connections and, until [`LinkProxy::unblock`],
    /// every new one as soon as it is accepted.
    pub fn block(&self) {
        self.blocked.send_replace(true);
    }

    /// Heals the link: new connections are forwarded again (cut ones stay closed).
    pub fn unblock(&self) {
        self.blocked.send_replace(false);
    }

    /// Whether the link is cut.
    pub fn is_blocked(&self) -> bool {
        *self.blocked.borrow()
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        self.block();
        self.accept_task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    async fn echo_server() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = socket.read(&mut buf).await {
                        if n == 0 || socket.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn round_trip(addr: &str) -> bool {
        let Ok(mut socket) = TcpStream::connect(addr).await else {
            return false;
        };
        if socket.write_all(b"ping").await.is_err() {
            return false;
        }
        let mut buf = [0u8; 4];
        matches!(
            tokio::time::timeout(std::time::Duration::from_secs(2), socket.read_exact(&mut buf)).await,
            Ok(Ok(_))
        ) && &buf == b"ping"
    }

    #[tokio::test]
    async fn forwards_until_blocked_and_again_after() {
        let target = echo_server().await;
        let proxy = LinkProxy::start("127.0.0.1:0", target).await.unwrap();
        assert!(round_trip(proxy.addr()).await);

        // An open connection is cut when the link is blocked.
        let mut open = TcpStream::connect(proxy.addr()).await.unwrap();
        open.write_all(b"x").await.unwrap();
        let mut one = [0u8; 1];
        open.read_exact(&mut one).await.unwrap();
        proxy.block();
        let mut rest = [0u8; 1];
        let read = tokio::time::timeout(std::time::Duration::from_secs(2), open.read(&mut rest)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "cut connection reads EOF: {read:?}"
        );
        assert!(!round_trip(proxy.addr()).await, "new connections fail while blocked");

        proxy.unblock();
        assert!(round_trip(proxy.addr()).await);
    }
}
