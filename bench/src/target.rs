//! The stores under test, behind one trait: kvs (its Rust client), etcd
//! (its gRPC API through the `etcd-api` crate's generated client, linearizable
//! reads, etcd's default) and Redis (`redis`).
//!
//! Each benchmark client opens a [`Session`] of its own: one TCP connection
//! (one HTTP/2 connection for etcd), used for one request at a time.

use std::future::Future;
use std::time::Duration;

use etcd_api::etcdserverpb::kv_client::KvClient;
use etcd_api::etcdserverpb::{PutRequest, RangeRequest};
use serde::Serialize;

/// Why one request failed.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("kvs: {0}")]
    Kvs(#[from] client::Error),
    #[error("etcd: cannot connect: {0}")]
    EtcdConnect(#[from] tonic::transport::Error),
    #[error("etcd: {}", .0.message())]
    Etcd(#[from] tonic::Status),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// One connection to a store.
pub trait Session: Send + 'static {
    /// Reads `key`; returns whether it was present.
    fn get(&mut self, key: &str) -> impl Future<Output = Result<bool, TargetError>> + Send;
    /// Stores `value` under `key`, durably as the store is configured.
    fn put(&mut self, key: &str, value: &str) -> impl Future<Output = Result<(), TargetError>> + Send;
}

/// A store to benchmark: opens sessions.
pub trait Target: Send + Sync + 'static {
    type Session: Session;
    fn connect(&self) -> impl Future<Output = Result<Self::Session, TargetError>> + Send;
}

/// Which store, as named on the command line and in reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Kvs,
    Etcd,
    Redis,
}

// ----- kvs -----

pub struct Kvs {
    pub endpoints: Vec<String>,
    pub request_timeout: Duration,
}

impl Target for Kvs {
    type Session = client::Client;

    async fn connect(&self) -> Result<client::Client, TargetError> {
        let mut config = client::ClientConfig::new(self.endpoints.clone());
        config.request_timeout = self.request_timeout;
        Ok(client::Client::connect(config).await?)
    }
}

impl Session for client::Client {
    async fn get(&mut self, key: &str) -> Result<bool, TargetError> {
        Ok(client::Client::get(self, key).await?.is_some())
    }

    async fn put(&mut self, key: &str, value: &str) -> Result<(), TargetError> {
        client::Client::put(self, key, value).await?;
        Ok(())
    }
}

// ----- etcd -----

pub struct Etcd {
    pub endpoints: Vec<String>,
}

/// One etcd KV client over one HTTP/2 channel that spreads requests over the
/// listed members, as `etcd-client` and etcd's own Go client do.
pub type EtcdKv = KvClient<tonic::transport::Channel>;

impl Target for Etcd {
    type Session = EtcdKv;

    async fn connect(&self) -> Result<EtcdKv, TargetError> {
        Ok(connect_etcd(&self.endpoints).await?)
    }
}

/// Connects a KV client to etcd members given as URLs (`http://host:port`).
pub async fn connect_etcd(endpoints: &[String]) -> Result<EtcdKv, tonic::transport::Error> {
    let mut members = Vec::with_capacity(endpoints.len());
    for endpoint in endpoints {
        members.push(tonic::transport::Endpoint::from_shared(endpoint.clone())?.tcp_nodelay(true));
    }
    let channel = match members.as_slice() {
        [one] => one.connect().await?,
        _ => tonic::transport::Channel::balance_list(members.into_iter()),
    };
    Ok(KvClient::new(channel))
}

impl Session for EtcdKv {
    async fn get(&mut self, key: &str) -> Result<bool, TargetError> {
        // serializable = false: a linearizable read (etcd's default).
        let request = RangeRequest {
            key: key.as_bytes().to_vec(),
            ..RangeRequest::default()
        };
        let response = self.range(request).await?;
        Ok(!response.into_inner().kvs.is_empty())
    }

    async fn put(&mut self, key: &str, value: &str) -> Result<(), TargetError> {
        let request = PutRequest {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            ..PutRequest::default()
        };
        KvClient::put(self, request).await?;
        Ok(())
    }
}

// ----- Redis -----

pub struct Redis {
    pub url: String,
}

impl Target for Redis {
    type Session = redis::aio::MultiplexedConnection;

    async fn connect(&self) -> Result<redis::aio::MultiplexedConnection, TargetError> {
        let client = redis::Client::open(self.url.as_str())?;
        Ok(client.get_multiplexed_async_connection().await?)
    }
}

impl Session for redis::aio::MultiplexedConnection {
    async fn get(&mut self, key: &str) -> Result<bool, TargetError> {
        let value: Option<Vec<u8>> = redis::cmd("GET").arg(key).query_async(self).await?;
        Ok(value.is_some())
    }

    async fn put(&mut self, key: &str, value: &str) -> Result<(), TargetError> {
        let () = redis::cmd("SET").arg(key).arg(value).query_async(self).await?;
        Ok(())
    }
}
