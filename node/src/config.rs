//! `cluster.toml`: the cluster's members, timers and limits.
//!
//! Loaded with the `config` crate; environment variables `KVS_<SECTION>__<KEY>`
//! override the file (for example `KVS_CLUSTER__ELECTION_TIMEOUT_MS=500`), and
//! `KVS_MONGODB_URI` overrides `storage.uri` (so credentials need not be in the file).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use actors::messages::Settings;
use actors::storage::MongoConfig;
use protocol::NodeId;
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}")]
    Load {
        path: String,
        #[source]
        source: config::ConfigError,
    },
    /// A key no section knows: a misspelling would otherwise start the node on
    /// defaults without a word.
    #[error("unknown key `{key}` in {origin}; the closest known key is `{closest}`")]
    UnknownKey {
        key: String,
        /// The file, or the environment variable, that sets it.
        origin: String,
        closest: String,
    },
    #[error("invalid cluster configuration: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Deserialize)]
pub struct ClusterFile {
    pub cluster: ClusterSection,
    #[serde(default)]
    pub storage: StorageSection,
    pub nodes: Vec<NodeEntry>,
    /// Folder of the file itself: a relative `data_dir` is taken from here.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ClusterSection {
    pub id: String,
    #[serde(default = "defaults::data_dir")]
    pub data_dir: PathBuf,
    #[serde(default = "defaults::commit_interval_ms")]
    pub commit_interval_ms: u64,
    #[serde(default = "defaults::heartbeat_interval_ms")]
    pub heartbeat_interval_ms: u64,
    #[serde(default = "defaults::election_timeout_ms")]
    pub election_timeout_ms: u64,
    #[serde(default = "defaults::trim_interval_ms")]
    pub trim_interval_ms: u64,
    #[serde(default = "defaults::max_key_bytes")]
    pub max_key_bytes: usize,
    #[serde(default = "defaults::max_value_bytes")]
    pub max_value_bytes: usize,
    /// How long a client request may wait for its answer; default: twice the election timeout.
    pub request_timeout_ms: Option<u64>,
    /// Most entries per AppendEntries message.
    #[serde(default = "defaults::max_batch_entries")]
    pub max_batch_entries: usize,
    /// Most entries sent to one follower and not yet acknowledged.
    #[serde(default = "defaults::max_inflight_entries")]
    pub max_inflight_entries: u64,
    /// Largest frame accepted from a peer (AppendEntries batches, snapshots).
    #[serde(default = "defaults::max_peer_frame_bytes")]
    pub max_peer_frame_bytes: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct StorageSection {
    /// `embedded` (redb, in the data folder) or `mongodb`.
    #[serde(default = "defaults::engine")]
    pub engine: String,
    /// MongoDB connection string (engine `mongodb`). May hold credentials: it is never logged as is.
    #[serde(default = "defaults::mongodb_uri")]
    pub uri: String,
    /// Node N uses the database `<database_prefix>_<cluster id>_<N>`.
    #[serde(default = "defaults::database_prefix")]
    pub database_prefix: String,
    /// How long one MongoDB operation waits for an unreachable server (and the start-up check).
    #[serde(default = "defaults::mongodb_timeout_ms")]
    pub timeout_ms: u64,
}

impl Default for StorageSection {
    fn default() -> Self {
        StorageSection {
            engine: defaults::engine(),
            uri: defaults::mongodb_uri(),
            database_prefix: defaults::database_prefix(),
            timeout_ms: defaults::mongodb_timeout_ms(),
        }
    }
}

/// Environment variable that replaces `storage.uri`.
pub const MONGODB_URI_ENV: &str = "KVS_MONGODB_URI";
/// Longest database name MongoDB accepts, in bytes.
const MAX_DATABASE_NAME: usize = 63;

#[derive(Debug, Clone, Deserialize)]
pub struct NodeEntry {
    pub id: NodeId,
    pub client_addr: String,
    pub peer_addr: String,
    /// Optional Redis-protocol (RESP2) port: redis-cli and Redis clients can use kvs there.
    #[serde(default)]
    pub resp_addr: Option<String>,
}

mod defaults {
    use std::path::PathBuf;
    pub fn data_dir() -> PathBuf {
        PathBuf::from("data")
    }
    pub fn commit_interval_ms() -> u64 {
        2000
    }
    pub fn heartbeat_interval_ms() -> u64 {
        5000
    }
    pub fn election_timeout_ms() -> u64 {
        8000
    }
    pub fn trim_interval_ms() -> u64 {
        60000
    }
    pub fn max_key_bytes() -> usize {
        protocol::limits::DEFAULT_MAX_KEY_BYTES
    }
    pub fn max_value_bytes() -> usize {
        protocol::limits::DEFAULT_MAX_VALUE_BYTES
    }
    pub fn max_batch_entries() -> usize {
        1024
    }
    pub fn max_inflight_entries() -> u64 {
        16384
    }
    pub fn max_peer_frame_bytes() -> usize {
        protocol::limits::DEFAULT_MAX_PEER_FRAME
    }
    pub fn engine() -> String {
        "embedded".into()
    }
    pub fn mongodb_uri() -> String {
        "mongodb://127.0.0.1:27017".into()
    }
    pub fn database_prefix() -> String {
        "kvs".into()
    }
    pub fn mongodb_timeout_ms() -> u64 {
        5000
    }
}

impl ClusterFile {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let load_error = |source| ConfigError::Load {
            path: path.display().to_string(),
            source,
        };
        let file_source = config::File::from(path).format(config::FileFormat::Toml);
        let written = config::Config::builder()
            .add_source(file_source.clone())
            .build()
            .map_err(load_error)?;
        check_known_keys(written, &path.display().to_string())?;
        let overrides = environment_overrides();
        check_overrides_are_known(&overrides)?;
        let mut file: ClusterFile = config::Config::builder()
            .add_source(file_source)
            .add_source(
                config::Environment::with_prefix("KVS")
                    .prefix_separator("_")
                    .separator("__")
                    .try_parsing(true)
                    .source(Some(overrides.into_iter().collect())),
            )
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(load_error)?;
        file.base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        if let Some(uri) = std::env::var_os(MONGODB_URI_ENV) {
            file.storage.uri = uri
                .into_string()
                .map_err(|_| ConfigError::Invalid(format!("{MONGODB_URI_ENV} is not UTF-8")))?;
        }
        file.validate()?;
        Ok(file)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let c = &self.cluster;
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.nodes.is_empty() {
            return invalid("no [[nodes]] listed".into());
        }
        let mut ids: Vec<NodeId> = self.nodes.iter().map(|n| n.id).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() != self.nodes.len() {
            return invalid("two [[nodes]] share an id".into());
        }
        if ids.contains(&0) || ids.iter().any(|&id| id >= 1 << 16) {
            return invalid("node ids must be between 1 and 65535".into());
        }
        for node in &self.nodes {
            let addresses = [
                ("client_addr", Some(&node.client_addr)),
                ("peer_addr", Some(&node.peer_addr)),
                ("resp_addr", node.resp_addr.as_ref()),
            ];
            for (key, address) in addresses {
                if let Some(Err(e)) = address.map(|a| protocol::limits::parse_endpoint(a)) {
                    return invalid(format!("node {}: {key}: {e}", node.id));
                }
            }
        }
        if c.heartbeat_interval_ms == 0 || c.election_timeout_ms <= c.heartbeat_interval_ms {
            return invalid(format!(
                "election_timeout_ms ({}) must be larger than heartbeat_interval_ms ({}), which must not be 0",
                c.election_timeout_ms, c.heartbeat_interval_ms
            ));
        }
        if c.commit_interval_ms == 0 || c.trim_interval_ms == 0 {
            return invalid("commit_interval_ms and trim_interval_ms must not be 0".into());
        }
        if !protocol::limits::key_value_limits_fit(c.max_key_bytes, c.max_value_bytes) {
            return invalid(format!(
                "max_key_bytes must not be 0, and max_key_bytes + max_value_bytes must fit in half a client frame ({} bytes)",
                protocol::limits::MAX_CLIENT_FRAME / 2
            ));
        }
        // A snapshot chunk and its envelope must fit, or a lagging follower never catches up.
        let min_peer_frame = 2 * protocol::SNAPSHOT_CHUNK_BYTES;
        if c.max_peer_frame_bytes < min_peer_frame {
            return invalid(format!(
                "max_peer_frame_bytes must be at least {min_peer_frame} (a snapshot chunk is {} bytes)",
                protocol::SNAPSHOT_CHUNK_BYTES
            ));
        }
        if c.max_batch_entries == 0 || c.max_inflight_entries == 0 {
            return invalid("max_batch_entries and max_inflight_entries must not be 0".into());
        }
        match self.storage.engine.as_str() {
            "embedded" => {}
            "mongodb" => self.validate_mongodb()?,
            other => {
                return invalid(format!(
                    "storage engine {other:?} is not available; choose \"embedded\" or \"mongodb\""
                ))
            }
        }
        Ok(())
    }

    fn validate_mongodb(&self) -> Result<(), ConfigError> {
        let s = &self.storage;
        if !s.uri.starts_with("mongodb://") && !s.uri.starts_with("mongodb+srv://") {
            return Err(ConfigError::Invalid(format!(
                "storage.uri {} is not a mongodb:// connection string",
                actors::storage::mongo_store::redact_uri(&s.uri)
            )));
        }
        if s.timeout_ms == 0 {
            return Err(ConfigError::Invalid("storage.timeout_ms must not be 0".into()));
        }
        if s.database_prefix.is_empty() {
            return Err(ConfigError::Invalid("storage.database_prefix must not be empty".into()));
        }
        // The longest name is that of the highest node id.
        let longest = self.nodes.iter().map(|n| n.id).max().unwrap_or(1);
        let name = self.mongodb_database(longest);
        if let Some(bad) = name.chars().find(|c| "/\\. \"$*<>:|?\0".contains(*c)) {
            return Err(ConfigError::Invalid(format!(
                "MongoDB database name {name:?} (storage.database_prefix, cluster.id, node id) contains {bad:?}, \
                 which MongoDB does not allow in database names"
            )));
        }
        if name.len() > MAX_DATABASE_NAME {
            return Err(ConfigError::Invalid(format!(
                "MongoDB database name {name:?} is longer than {MAX_DATABASE_NAME} bytes: \
                 shorten storage.database_prefix or cluster.id"
            )));
        }
        Ok(())
    }

    /// The MongoDB database of node `id`: `<database_prefix>_<cluster id>_<id>`.
    pub fn mongodb_database(&self, id: NodeId) -> String {
        format!("{}_{}_{id}", self.storage.database_prefix, self.cluster.id)
    }

    /// Where node `id` keeps its state with the `mongodb` engine.
    pub fn mongodb_config(&self, id: NodeId) -> Result<MongoConfig, ConfigError> {
        self.node(id)?;
        Ok(MongoConfig {
            uri: self.storage.uri.clone(),
            database: self.mongodb_database(id),
            cluster_id: self.cluster.id.clone(),
            node_id: id,
            timeout: Duration::from_millis(self.storage.timeout_ms),
        })
    }

    pub fn node(&self, id: NodeId) -> Result<&NodeEntry, ConfigError> {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .ok_or_else(|| ConfigError::Invalid(format!("node {id} is not listed in [[nodes]]")))
    }

    /// The cluster's data folder (a relative one is taken from the file's folder).
    pub fn data_dir(&self) -> PathBuf {
        if self.cluster.data_dir.is_absolute() {
            self.cluster.data_dir.clone()
        } else {
            self.base_dir.join(&self.cluster.data_dir)
        }
    }

    /// What the actors of node `id` need to know.
    pub fn settings_for(&self, id: NodeId) -> Result<Arc<Settings>, ConfigError> {
        self.node(id)?;
        let c = &self.cluster;
        let election_timeout = Duration::from_millis(c.election_timeout_ms);
        Ok(Arc::new(Settings {
            node_id: id,
            cluster_id: c.id.clone(),
            members: self.nodes.iter().map(|n| (n.id, n.client_addr.clone())).collect(),
            data_dir: self.data_dir().join(id.to_string()),
            commit_interval: Duration::from_millis(c.commit_interval_ms),
            heartbeat_interval: Duration::from_millis(c.heartbeat_interval_ms),
            election_timeout,
            trim_interval: Duration::from_millis(c.trim_interval_ms),
            request_timeout: c
                .request_timeout_ms
                .map(Duration::from_millis)
                .unwrap_or(election_timeout * 2),
            max_key_bytes: c.max_key_bytes,
            max_value_bytes: c.max_value_bytes,
            max_batch_entries: c.max_batch_entries,
            max_batch_bytes: (c.max_peer_frame_bytes / 4).clamp(4096, 4 << 20),
            max_inflight_entries: c.max_inflight_entries,
        }))
    }
}

/// The keys serde reads for `T`, in declaration order.
fn known_keys<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    serde_aux::serde_introspection::serde_introspect::<T>()
}

/// The file's named sections and the keys each reads. The environment may
/// override these keys, as `KVS_<SECTION>__<KEY>`; other `KVS_` variables
/// belong to other programs (`KVS_ENDPOINTS` is kvctl's).
fn sections() -> [(&'static str, &'static [&'static str]); 2] {
    [
        ("cluster", known_keys::<ClusterSection>()),
        ("storage", known_keys::<StorageSection>()),
    ]
}

/// The known key most like `unknown`. Jaro-Winkler weighs a shared start
/// most, as in `heartbeat_ms` for `heartbeat_interval_ms`.
fn closest_key(unknown: &str, known: &[&str]) -> String {
    known
        .iter()
        .map(|candidate| (strsim::jaro_winkler(unknown, candidate), *candidate))
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map_or_else(String::new, |(_, closest)| closest.to_string())
}

/// The refusal of `key` (under `prefix`, e.g. `cluster.`), set in `origin`.
fn unknown_key(prefix: &str, key: &str, known: &[&str], origin: &str) -> ConfigError {
    ConfigError::UnknownKey {
        key: format!("{prefix}{key}"),
        origin: origin.to_string(),
        closest: format!("{prefix}{}", closest_key(key, known)),
    }
}

fn check_table(
    table: &config::Map<String, config::Value>,
    prefix: &str,
    known: &[&str],
    origin: &str,
) -> Result<(), ConfigError> {
    // Sorted so that the error names the same key on every run.
    let mut keys: Vec<&String> = table.keys().collect();
    keys.sort();
    match keys.into_iter().find(|key| !known.contains(&key.as_str())) {
        Some(key) => Err(unknown_key(prefix, key, known, origin)),
        None => Ok(()),
    }
}

/// Refuses any key of the file that no section reads, naming it, the file and
/// the closest known key.
fn check_known_keys(written: config::Config, origin: &str) -> Result<(), ConfigError> {
    let top: config::Map<String, config::Value> = written.try_deserialize().map_err(|source| ConfigError::Load {
        path: origin.to_string(),
        source,
    })?;
    check_table(&top, "", known_keys::<ClusterFile>(), origin)?;
    for (section, known) in sections() {
        if let Some(value) = top.get(section) {
            if let Ok(table) = value.clone().into_table() {
                check_table(&table, &format!("{section}."), known, origin)?;
            }
        }
    }
    if let Some(Ok(nodes)) = top.get("nodes").map(|value| value.clone().into_array()) {
        for (index, node) in nodes.into_iter().enumerate() {
            if let Ok(table) = node.into_table() {
                check_table(&table, &format!("nodes[{index}]."), known_keys::<NodeEntry>(), origin)?;
            }
        }
    }
    Ok(())
}

/// The section (with its keys) and the key, lowercased, that a
/// `KVS_<SECTION>__<KEY>` variable names, if its section is one of [`sections`].
fn override_target(name: &str) -> Option<(&'static str, &'static [&'static str], String)> {
    let (section, key) = name.strip_prefix("KVS_")?.split_once("__")?;
    let (section, known) = sections()
        .into_iter()
        .find(|(known_section, _)| known_section.to_uppercase() == section)?;
    Some((section, known, key.to_lowercase()))
}

/// The process's `KVS_CLUSTER__*` and `KVS_STORAGE__*` variables.
fn environment_overrides() -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(name, _)| override_target(name).is_some())
        .collect()
}

/// An override of a key that does not exist is refused like one in the file.
fn check_overrides_are_known(overrides: &[(String, String)]) -> Result<(), ConfigError> {
    for (name, _) in overrides {
        if let Some((section, known, key)) = override_target(name) {
            if !known.contains(&key.as_str()) {
                let origin = format!("the environment variable {name}");
                return Err(unknown_key(&format!("{section}."), &key, known, &origin));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("cluster.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    const MINIMAL: &str = r#"
[cluster]
id = "t"
[[nodes]]
id = 1
client_addr = "127.0.0.1:5000"
peer_addr = "127.0.0.1:6000"
"#;

    #[test]
    fn defaults_are_the_documented_timers() {
        let dir = tempfile::tempdir().unwrap();
        let file = ClusterFile::load(&write(dir.path(), MINIMAL)).unwrap();
        let s = file.settings_for(1).unwrap();
        assert_eq!(s.commit_interval, Duration::from_secs(2));
        assert_eq!(s.heartbeat_interval, Duration::from_secs(5));
        assert_eq!(s.election_timeout, Duration::from_secs(8));
        assert_eq!(s.trim_interval, Duration::from_secs(60));
        assert_eq!((s.max_key_bytes, s.max_value_bytes), (128, 2048));
        assert_eq!(s.data_dir, dir.path().join("data").join("1"));
    }

    #[test]
    fn bad_timers_and_unknown_nodes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let text = MINIMAL.replace(
            "id = \"t\"",
            "id = \"t\"\nheartbeat_interval_ms = 900\nelection_timeout_ms = 800",
        );
        assert!(matches!(
            ClusterFile::load(&write(dir.path(), &text)),
            Err(ConfigError::Invalid(_))
        ));
        let file = ClusterFile::load(&write(dir.path(), MINIMAL)).unwrap();
        assert!(file.settings_for(7).is_err());
        let tiny_frames = MINIMAL.replace("id = \"t\"", "id = \"t\"\nmax_peer_frame_bytes = 65536");
        assert!(matches!(
            ClusterFile::load(&write(dir.path(), &tiny_frames)),
            Err(ConfigError::Invalid(message)) if message.contains("max_peer_frame_bytes")
        ));
    }

    #[test]
    fn addresses_follow_the_shared_endpoint_rule() {
        let dir = tempfile::tempdir().unwrap();
        let refused = |text: String| match ClusterFile::load(&write(dir.path(), &text)) {
            Err(ConfigError::Invalid(message)) => message,
            other => panic!("accepted {text}: {other:?}"),
        };
        let zero_port = refused(MINIMAL.replace("127.0.0.1:5000", "127.0.0.1:0"));
        assert!(
            zero_port.contains("node 1: client_addr") && zero_port.contains("invalid port"),
            "{zero_port}"
        );
        let no_port = refused(MINIMAL.replace("127.0.0.1:6000", "127.0.0.1"));
        assert!(no_port.contains("node 1: peer_addr"), "{no_port}");
        let resp = refused(format!("{MINIMAL}resp_addr = \"local host:6379\"\n"));
        assert!(resp.contains("node 1: resp_addr"), "{resp}");
        let with_resp = format!("{MINIMAL}resp_addr = \"[::1]:6379\"\n");
        assert!(ClusterFile::load(&write(dir.path(), &with_resp)).is_ok());
    }

    #[test]
    fn mongodb_engine_names_one_database_per_node() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "{MINIMAL}\n[storage]\nengine = \"mongodb\"\nuri = \"mongodb://u:pw@db:27017\"\ndatabase_prefix = \"p\"\n"
        );
        let file = ClusterFile::load(&write(dir.path(), &text)).unwrap();
        let config = file.mongodb_config(1).unwrap();
        assert_eq!(config.database, "p_t_1");
        assert_eq!(config.uri, "mongodb://u:pw@db:27017");
        assert_eq!(config.timeout, Duration::from_secs(5));

        // Names MongoDB refuses are caught when the file is loaded, not at the first write.
        let dotted = text.replace("id = \"t\"", "id = \"a.b\"");
        assert!(matches!(
            ClusterFile::load(&write(dir.path(), &dotted)),
            Err(ConfigError::Invalid(_))
        ));
        let long = text.replace("id = \"t\"", &format!("id = \"{}\"", "x".repeat(60)));
        assert!(matches!(
            ClusterFile::load(&write(dir.path(), &long)),
            Err(ConfigError::Invalid(_))
        ));
        let http = text.replace("mongodb://u:pw@db:27017", "http://db");
        let error = ClusterFile::load(&write(dir.path(), &http)).unwrap_err().to_string();
        assert!(error.contains("http://db"), "{error}");
        let unknown = text.replace("engine = \"mongodb\"", "engine = \"rocks\"");
        assert!(matches!(
            ClusterFile::load(&write(dir.path(), &unknown)),
            Err(ConfigError::Invalid(_))
        ));
    }

    #[test]
    fn the_shipped_cluster_toml_is_the_three_local_nodes() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../cluster.toml");
        let file = ClusterFile::load(&path).unwrap();
        let clients: Vec<&str> = file.nodes.iter().map(|n| n.client_addr.as_str()).collect();
        assert_eq!(clients, ["127.0.0.1:5000", "127.0.0.1:5001", "127.0.0.1:5002"]);
        assert_eq!(file.cluster.id, "kvs-local");
        assert_eq!(file.storage.engine, "embedded");
    }
}
