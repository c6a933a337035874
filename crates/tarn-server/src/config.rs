//! Server settings: defaults that need no configuration, a TOML file
//! (`--config`), and `TARN_*` environment variables, in that order of
//! precedence (later wins).
//!
//! ```toml
//! listen = "127.0.0.1:7070"
//! data_dir = "./tarn-data"
//! tick_ms = 5
//! [wal]
//! sync = "batch(2)"          # always | never | batch(<ms>)
//! segment_bytes = 67108864
//! [history]
//! horizon_ms = 600000        # or: forever = true
//! [archive]
//! url = "s3://bucket/prefix" # default: <data_dir>/archive
//! [limits]
//! max_message_bytes = 16777216
//! max_watches_per_connection = 10000
//! [functions]
//! timeout_ms = 100
//! memory_bytes = 67108864
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tarn_core::{EngineConfig, Retention};
use tarn_store::{StoreOptions, SyncPolicy};

/// Every setting of the server.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on (`listen`, env `TARN_LISTEN`).
    pub listen: SocketAddr,
    /// This node's id: the tiebreak of its commit times (`node_id`, env
    /// `TARN_NODE_ID`); distinct per node in a cluster.
    pub node_id: u32,
    /// Data directory (`data_dir`, env `TARN_DATA_DIR`).
    pub data_dir: PathBuf,
    /// While watch updates arrive at a connection faster than they are
    /// written (the last flush carried several), they are flushed at most
    /// once per tick (`tick_ms`, env `TARN_TICK_MS`); one at a time, each
    /// leaves at once.
    pub tick_ms: u64,
    /// The write-ahead log.
    pub wal: WalConfig,
    /// History retention.
    pub history: HistoryConfig,
    /// Archives.
    pub archive: ArchiveConfig,
    /// Limits (DESIGN §10).
    pub limits: Limits,
    /// Server functions.
    pub functions: FunctionsConfig,
}

/// `[functions]`: limits of the app's server functions.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FunctionsConfig {
    /// Wall time of one run, in ms (`timeout`).
    pub timeout_ms: u64,
    /// Memory one run may allocate (`out_of_memory`).
    pub memory_bytes: usize,
    /// JavaScript stack of one run (`stack_overflow`).
    pub stack_bytes: usize,
    /// Reruns after conflicts before a call fails with `conflict`.
    pub max_reruns: u32,
    /// Engine threads; 0 is one per core.
    pub engines: usize,
    /// Calls queued or running on the server (`rate_limited`).
    pub max_pending_calls: usize,
    /// How long a call id's outcome is kept: a repeat within it is
    /// answered from the outcome, after it runs again.
    pub outcome_retention_ms: u64,
}

impl Default for FunctionsConfig {
    fn default() -> Self {
        let d = tarn_functions::FunctionLimits::default();
        FunctionsConfig {
            timeout_ms: u64::try_from(d.timeout.as_millis()).unwrap_or(100),
            memory_bytes: d.memory_bytes,
            stack_bytes: d.stack_bytes,
            max_reruns: d.max_reruns,
            engines: d.engines,
            max_pending_calls: d.max_pending_calls,
            outcome_retention_ms: u64::try_from(d.outcome_retention.as_millis())
                .unwrap_or(u64::MAX),
        }
    }
}

impl FunctionsConfig {
    /// As the runner's limits.
    pub fn limits(&self) -> tarn_functions::FunctionLimits {
        tarn_functions::FunctionLimits {
            timeout: std::time::Duration::from_millis(self.timeout_ms),
            memory_bytes: self.memory_bytes,
            stack_bytes: self.stack_bytes,
            max_reruns: self.max_reruns,
            engines: self.engines,
            max_pending_calls: self.max_pending_calls,
            outcome_retention: std::time::Duration::from_millis(self.outcome_retention_ms),
        }
    }
}

/// `[wal]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WalConfig {
    /// `always`, `never` or `batch(<ms>)` (env `TARN_WAL_SYNC`).
    pub sync: String,
    /// Segment size in bytes.
    pub segment_bytes: u64,
    /// Skip damaged records in the middle of the log at startup.
    pub recover: bool,
}

/// `[history]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    /// Keep versions this many ms (env `TARN_HISTORY_HORIZON_MS`).
    pub horizon_ms: u64,
    /// Keep every version (time travel and undo), ignoring `horizon_ms`.
    pub forever: bool,
}

/// `[archive]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveConfig {
    /// Object store URL (env `TARN_ARCHIVE_URL`); default: the data dir.
    pub url: Option<String>,
    /// object_store options (`aws_endpoint`, `aws_region`, ...).
    pub options: std::collections::BTreeMap<String, String>,
}

/// `[limits]`: every limit has a default here and a typed error on the
/// wire.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest WebSocket message or HTTP body (`too_large`).
    pub max_message_bytes: usize,
    /// Largest leaf value, as JSON (`bad_value`).
    pub max_value_bytes: usize,
    /// Longest path in bytes (`bad_path`).
    pub max_path_bytes: usize,
    /// Longest key in bytes (`bad_path`).
    pub max_key_bytes: usize,
    /// Deepest path (`bad_path`).
    pub max_path_depth: usize,
    /// Watches per connection (`too_many_watches`).
    pub max_watches_per_connection: usize,
    /// Requests in flight per connection (`rate_limited`).
    pub max_in_flight_per_connection: usize,
    /// Bytes queued to a connection before it is closed as a slow
    /// consumer (`slow_consumer`).
    pub max_send_buffer_bytes: usize,
    /// Open connections (WebSocket and SSE) per server
    /// (`too_many_connections`).
    pub max_connections: usize,
    /// Requests per second per connection (`rate_limited`).
    pub max_requests_per_sec: u32,
    /// Watches on the whole server (`too_many_watches`).
    pub max_watches: usize,
    /// Reads in one transaction (`bad_transaction`).
    pub max_txn_reads: usize,
    /// Writes in one transaction (`bad_transaction`).
    pub max_txn_writes: usize,
    /// Leaves one transaction writes, objects flattened (`bad_transaction`).
    pub max_txn_leaves: usize,
    /// Bytes of values one transaction writes (`too_large`).
    pub max_txn_bytes: usize,
    /// Leaf changes one commit makes, implied deletions included
    /// (`bad_transaction`).
    pub max_txn_changes: usize,
    /// Nesting of arrays/objects inside one value (`bad_value`).
    pub max_value_nesting: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            node_id: 1,
            data_dir: PathBuf::from("tarn-data"),
            tick_ms: 5,
            wal: WalConfig::default(),
            history: HistoryConfig::default(),
            archive: ArchiveConfig::default(),
            limits: Limits::default(),
            functions: FunctionsConfig::default(),
        }
    }
}

impl Default for WalConfig {
    fn default() -> Self {
        WalConfig {
            sync: "batch(2)".into(),
            segment_bytes: 64 << 20,
            recover: false,
        }
    }
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            horizon_ms: 10 * 60 * 1000,
            forever: false,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 16 << 20,
            max_value_bytes: 1 << 20,
            max_path_bytes: 1024,
            max_key_bytes: 256,
            max_path_depth: 32,
            max_watches_per_connection: 10_000,
            max_in_flight_per_connection: 1024,
            max_send_buffer_bytes: 16 << 20,
            max_connections: 10_000,
            max_requests_per_sec: 100_000,
            max_watches: 1_000_000,
            max_txn_reads: 10_000,
            max_txn_writes: 10_000,
            max_txn_leaves: 100_000,
            max_txn_bytes: 16 << 20,
            max_txn_changes: 1_000_000,
            max_value_nesting: 64,
        }
    }
}

/// Applies `TARN_*` variables to a config table: `TARN_LISTEN` sets
/// `listen`, `TARN_WAL_SYNC` sets `[wal] sync`,
/// `TARN_LIMITS_MAX_CONNECTIONS` sets `[limits] max_connections`,
/// `TARN_ARCHIVE_OPTIONS_AWS_REGION` sets `[archive.options] aws_region`:
/// every setting has one. Values are read as TOML (numbers, booleans),
/// else as strings. Variables that name no setting are left alone (they
/// may be the CLI's, like `TARN_SERVER`).
pub fn apply_env(table: &mut toml::Table, vars: impl Iterator<Item = (String, String)>) {
    let defaults = toml::Table::try_from(ServerConfig::default()).unwrap_or_default();
    for (name, raw) in vars {
        let Some(rest) = name.strip_prefix("TARN_") else {
            continue;
        };
        let rest = rest.to_ascii_lowercase();
        let value = format!("v = {raw}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or(toml::Value::String(raw));
        if let Some(key) = rest.strip_prefix("archive_options_") {
            let archive = table
                .entry("archive")
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let Some(archive) = archive.as_table_mut() {
                let options = archive
                    .entry("options")
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                if let Some(options) = options.as_table_mut() {
                    options.insert(key.to_string(), toml::Value::String(value_text(&value)));
                }
            }
            continue;
        }
        if defaults.get(&rest).is_some_and(|v| !v.is_table()) {
            table.insert(rest, value);
            continue;
        }
        for (section, fields) in defaults
            .iter()
            .filter_map(|(k, v)| v.as_table().map(|t| (k, t)))
        {
            let Some(key) = rest.strip_prefix(&format!("{section}_")) else {
                continue;
            };
            // Optional settings (archive.url) are absent from the defaults.
            let known = fields.contains_key(key) || (section == "archive" && key == "url");
            if known {
                let sec = table
                    .entry(section.clone())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                if let Some(sec) = sec.as_table_mut() {
                    let value = if section == "archive" || key == "sync" {
                        toml::Value::String(value_text(&value))
                    } else {
                        value.clone()
                    };
                    sec.insert(key.to_string(), value);
                }
            }
        }
    }
}

fn value_text(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("reading config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for these settings.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the line.
        message: String,
    },
    /// An environment variable has a bad value.
    #[error("environment variable {name}={value:?}: {message}")]
    Env {
        /// The variable.
        name: String,
        /// Its value.
        value: String,
        /// What is wrong.
        message: String,
    },
}

impl ServerConfig {
    /// Defaults, with data in `dir/data` and a free loopback port: a
    /// server for tests, examples and benchmarks.
    pub fn local(dir: &std::path::Path) -> ServerConfig {
        ServerConfig {
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: dir.join("data"),
            ..ServerConfig::default()
        }
    }

    /// Defaults, then the file (if any), then `TARN_*` variables.
    pub fn load(file: Option<&std::path::Path>) -> Result<ServerConfig, ConfigError> {
        let mut table = match file {
            None => toml::Table::new(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigError::Parse {
                        path: path.to_path_buf(),
                        message: e.to_string(),
                    })?
            }
        };
        apply_env(&mut table, std::env::vars());
        let config: ServerConfig =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    path: file.map_or_else(|| PathBuf::from("(environment)"), |p| p.to_path_buf()),
                    message: e.to_string(),
                })?;
        config.sync_policy().map_err(|message| ConfigError::Env {
            name: "wal.sync".into(),
            value: config.wal.sync.clone(),
            message,
        })?;
        Ok(config)
    }

    /// The parsed sync policy.
    pub fn sync_policy(&self) -> Result<SyncPolicy, String> {
        self.wal.sync.parse()
    }

    /// The store's options from these settings.
    pub fn store_options(&self) -> Result<StoreOptions, String> {
        let mut engine = EngineConfig {
            retention: if self.history.forever {
                Retention::Forever
            } else {
                Retention::HorizonMs(self.history.horizon_ms)
            },
            ..EngineConfig::default()
        };
        engine.paths.max_key_bytes = self.limits.max_key_bytes;
        engine.paths.max_depth = self.limits.max_path_depth;
        engine.paths.max_path_bytes = self.limits.max_path_bytes;
        engine.values.max_value_bytes = self.limits.max_value_bytes;
        engine.values.max_nesting = self.limits.max_value_nesting;
        engine.max_watches = self.limits.max_watches;
        engine.txns.max_reads = self.limits.max_txn_reads;
        engine.txns.max_writes = self.limits.max_txn_writes;
        engine.txns.max_leaves = self.limits.max_txn_leaves;
        engine.txns.max_bytes = self.limits.max_txn_bytes;
        engine.txns.max_changes = self.limits.max_txn_changes;
        engine.node = self.node_id;
        Ok(StoreOptions {
            sync: self.sync_policy()?,
            segment_bytes: self.wal.segment_bytes,
            recover: self.wal.recover,
            archive_url: self.archive.url.clone(),
            archive_options: self
                .archive
                .options
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            progress: true,
            engine,
            ..StoreOptions::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_and_env_override_defaults() {
        let mut table: toml::Table =
            "listen = \"127.0.0.1:9000\"\n[wal]\nsync = \"always\"\n[limits]\nmax_connections = 5\n"
                .parse()
                .expect("valid toml");
        let env = [
            ("TARN_DATA_DIR", "/srv/tarn"),
            ("TARN_LIMITS_MAX_WATCHES_PER_CONNECTION", "7"),
            ("TARN_WAL_SYNC", "batch(5)"),
            ("TARN_HISTORY_FOREVER", "true"),
            ("TARN_ARCHIVE_URL", "s3://b/p"),
            ("TARN_ARCHIVE_OPTIONS_AWS_REGION", "eu-west-1"),
            ("TARN_SERVER", "http://elsewhere"), // the CLI's: ignored
            ("PATH", "/bin"),
        ];
        apply_env(
            &mut table,
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        );
        let c: ServerConfig = toml::Value::Table(table).try_into().expect("valid config");
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.limits.max_connections, 5);
        assert_eq!(c.limits.max_watches_per_connection, 7);
        assert_eq!(c.data_dir, PathBuf::from("/srv/tarn"));
        assert!(matches!(c.sync_policy(), Ok(SyncPolicy::Batch(5))));
        assert!(c.history.forever);
        assert_eq!(c.archive.url.as_deref(), Some("s3://b/p"));
        assert_eq!(c.archive.options["aws_region"], "eu-west-1");
        assert!(toml::from_str::<ServerConfig>("typo = 1").is_err());
        let mut bad = toml::Table::new();
        apply_env(
            &mut bad,
            std::iter::once(("TARN_TICK_MS".to_string(), "soon".to_string())),
        );
        assert!(toml::Value::Table(bad).try_into::<ServerConfig>().is_err());
    }
}
