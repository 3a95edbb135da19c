//! The stores under test, behind one trait: kvs (its Rust client), etcd
//! (`etcd-client`, linearizable reads, the default) and Redis (`redis`).
//!
//! Each benchmark client opens a [`Session`] of its own: one TCP connection
//! (one HTTP/2 connection for etcd), used for one request at a time.

use std::future::Future;
use std::time::Duration;

use serde::Serialize;

/// Why one request failed.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("kvs: {0}")]
    Kvs(#[from] client::Error),
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
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

impl Target for Etcd {
    type Session = etcd_client::KvClient;

    async fn connect(&self) -> Result<etcd_client::KvClient, TargetError> {
        let client = etcd_client::Client::connect(&self.endpoints, None).await?;
        Ok(client.kv_client())
    }
}

impl Session for etcd_client::KvClient {
    async fn get(&mut self, key: &str) -> Result<bool, TargetError> {
        // No options: a linearizable read (etcd's default, not `serializable`).
        let response = etcd_client::KvClient::get(self, key, None).await?;
        Ok(!response.kvs().is_empty())
    }

    async fn put(&mut self, key: &str, value: &str) -> Result<(), TargetError> {
        etcd_client::KvClient::put(self, key, value, None).await?;
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
