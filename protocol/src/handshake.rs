//! The first frame on every connection, in both directions.
//!
//! The connecting side sends a [`Hello`]; the accepting side answers with a
//! [`HelloReply`] and, on rejection, closes the connection. Nothing else is
//! read before the handshake is accepted.

use serde::{Deserialize, Serialize};

use crate::{LogIndex, NodeId};

/// Identifies a kvs connection; anything else on the port is rejected.
pub const MAGIC: &str = "kvs";
/// Bumped whenever a message changes incompatibly (2: `SessionExpired`
/// carries the index a new session starts from; 3: snapshots are streamed
/// in chunks).
pub const PROTOCOL_VERSION: u16 = 3;

/// Who is connecting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Party {
    /// A client, on a node's client port.
    Client,
    /// Another node of the cluster, on the peer port.
    Peer {
        /// The connecting node's id.
        node_id: NodeId,
    },
}

/// The opening frame of a connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Always [`MAGIC`].
    pub magic: String,
    /// The sender's [`PROTOCOL_VERSION`].
    pub version: u16,
    /// The cluster the sender expects; a client may leave it empty (any cluster).
    pub cluster_id: String,
    /// Who is connecting.
    pub party: Party,
}

impl Hello {
    /// A hello from `party` for cluster `cluster_id`, with this build's magic and
    /// protocol version.
    pub fn new(cluster_id: impl Into<String>, party: Party) -> Self {
        Hello {
            magic: MAGIC.to_string(),
            version: PROTOCOL_VERSION,
            cluster_id: cluster_id.into(),
            party,
        }
    }

    /// Checks a received hello against what this end expects.
    pub fn check(&self, cluster_id: &str, expect_peer: bool) -> Result<(), (RejectReason, String)> {
        if self.magic != MAGIC {
            return Err((
                RejectReason::BadMagic,
                format!("expected magic {MAGIC:?}, got {:?}", self.magic),
            ));
        }
        if self.version != PROTOCOL_VERSION {
            return Err((
                RejectReason::UnsupportedVersion,
                format!(
                    "protocol version {} is not supported (this node speaks {PROTOCOL_VERSION})",
                    self.version
                ),
            ));
        }
        // A client may leave the cluster id empty (the C API has no place for it);
        // a peer must always name the right cluster.
        let client_without_id = self.party == Party::Client && self.cluster_id.is_empty();
        if self.cluster_id != cluster_id && !client_without_id {
            // Never this node's own id: knowing it is all a peer hello needs.
            return Err((
                RejectReason::WrongCluster,
                format!("this node does not belong to cluster {:?}", self.cluster_id),
            ));
        }
        match (&self.party, expect_peer) {
            (Party::Client, false) | (Party::Peer { .. }, true) => Ok(()),
            (Party::Client, true) => Err((
                RejectReason::WrongPort,
                "this is a peer port; clients use the client port".into(),
            )),
            (Party::Peer { .. }, false) => Err((
                RejectReason::WrongPort,
                "this is a client port; peers use the peer port".into(),
            )),
        }
    }
}

/// Why a handshake was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RejectReason {
    /// The first frame's magic was not [`MAGIC`]: not a kvs connection.
    BadMagic,
    /// The hello's protocol version is not the node's.
    UnsupportedVersion,
    /// The hello names another cluster.
    WrongCluster,
    /// A client on the peer port, or a peer on the client port.
    WrongPort,
    /// A peer whose node id is not another member of the node's cluster.
    UnknownNode,
    /// The first frame was not a valid hello.
    Malformed,
}

/// The answer to a [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HelloReply {
    /// The handshake succeeded: requests (or peer messages) may follow.
    Accepted {
        /// The accepting node's id.
        node_id: NodeId,
        /// The accepting node's protocol version.
        version: u16,
        /// The node's applied index: a floor for a client's new sessions.
        #[serde(default)]
        applied_index: LogIndex,
    },
    /// The handshake failed; the accepting side closes the connection.
    Rejected {
        /// Why, for programs.
        reason: RejectReason,
        /// Why, for people.
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_cluster_is_refused_with_a_reason() {
        let hello = Hello::new("other", Party::Client);
        let (reason, message) = hello.check("kvs-local", false).unwrap_err();
        assert_eq!(reason, RejectReason::WrongCluster);
        assert!(message.contains("\"other\""), "{message}");
        // The refusal must not tell a stranger the id a peer hello needs.
        assert!(!message.contains("kvs-local"), "{message}");
        let (_, message) = Hello::new("x", Party::Peer { node_id: 1 })
            .check("kvs-local", true)
            .unwrap_err();
        assert!(!message.contains("kvs-local"), "{message}");
        assert!(Hello::new("", Party::Client).check("kvs-local", false).is_ok());
        assert!(Hello::new("", Party::Peer { node_id: 1 })
            .check("kvs-local", true)
            .is_err());
    }

    #[test]
    fn a_client_on_the_peer_port_is_refused() {
        let hello = Hello::new("c", Party::Client);
        assert_eq!(hello.check("c", true).unwrap_err().0, RejectReason::WrongPort);
        assert!(Hello::new("c", Party::Peer { node_id: 2 }).check("c", true).is_ok());
    }
}
