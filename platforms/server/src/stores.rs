//! Opens the store `[server] store` names and maps it onto the core's ports.
//!
//! | store | keys and usage | admission (limits, budgets) |
//! |-------|----------------|-----------------------------|
//! | `sqlite` | the SQLite file | in this process ([`LocalLimiter`]), spend committed to the file in batches |
//! | `postgres` | PostgreSQL | PostgreSQL, under the key's row lock: shared by every server |
//! | `dynamodb` | DynamoDB (the Lambda function's tables and code) | DynamoDB, conditional writes on the key's item: shared |

use std::sync::Arc;

use conduit::metering::limits::LocalLimiter;
use conduit::ports::{Clock, KeyStore, Limiter, UsageStore};

use conduit_dynamodb::{Dynamo, Tables};

use crate::postgres::PgStore;
use crate::settings::StoreSettings;
use crate::store::SqliteStore;

/// The ports of an open store, and how to close it.
pub struct OpenStore {
    pub keys: Arc<dyn KeyStore>,
    pub usage: Arc<dyn UsageStore>,
    pub limiter: Arc<dyn Limiter>,
    /// Where the state is, for messages (never a secret).
    pub description: String,
    /// Other servers share this store: a response ends after its settlement.
    pub shared: bool,
    sqlite: Option<Arc<SqliteStore>>,
    /// SQLite's limiter: it saves each key's exact spend at close.
    local: Option<Arc<LocalLimiter>>,
}

impl OpenStore {
    /// A response ends after its settlement (when it did not complete at
    /// once): a shared store's, so that the key's next request sees it
    /// wherever it lands; SQLite's when the settlement raised a budgeted
    /// key's spend, so that the answer's last byte never leaves before the
    /// spend covering it is on disk.
    pub fn settle_before_end(&self) -> bool {
        self.shared || self.sqlite.is_some()
    }

    /// Flushes what is queued (SQLite's write-behind) and closes.
    pub fn close(&self) {
        if let Some(l) = &self.local {
            l.flush();
        }
        if let Some(s) = &self.sqlite {
            s.close();
        }
    }
}

/// Opens the store (and, for PostgreSQL, migrates its schema).
pub async fn open(settings: &StoreSettings, clock: Arc<dyn Clock>) -> Result<OpenStore, String> {
    match settings {
        StoreSettings::Sqlite { database } => {
            let store = SqliteStore::open(database)
                .map_err(|e| format!("cannot open the database {}: {e}", database.display()))?;
            let limiter = Arc::new(LocalLimiter::new(clock, Some(store.clone())));
            Ok(OpenStore {
                keys: store.clone(),
                usage: store.clone(),
                limiter: limiter.clone(),
                description: format!("database {}", database.display()),
                shared: false,
                sqlite: Some(store),
                local: Some(limiter),
            })
        }
        StoreSettings::Postgres { url_env, pool_size } => {
            let url = std::env::var(url_env)
                .ok()
                .filter(|u| !u.is_empty())
                .ok_or_else(|| {
                    format!("store = \"postgres\" needs the connection URL in the environment variable {url_env}")
                })?;
            let store = Arc::new(
                PgStore::connect(&url, *pool_size)
                    .await
                    .map_err(|e| format!("cannot open the PostgreSQL store: {e}"))?,
            );
            Ok(OpenStore {
                keys: store.clone(),
                usage: store.clone(),
                limiter: store,
                description: format!("PostgreSQL (URL from {url_env})"),
                shared: true,
                sqlite: None,
                local: None,
            })
        }
        StoreSettings::Dynamodb {
            keys_table,
            usage_table,
            create_tables,
        } => {
            // Endpoint, region and credentials from the usual AWS environment
            // (AWS_ENDPOINT_URL_DYNAMODB included).
            let aws = aws_config::defaults(aws_config::BehaviorVersion::latest())
                .load()
                .await;
            let mut tables = Tables::from_env();
            tables.keys = keys_table.clone();
            tables.usage = usage_table.clone();
            let store = Arc::new(Dynamo::new(
                conduit_dynamodb::client(aws_sdk_dynamodb::config::Builder::from(&aws)),
                tables,
            ));
            if *create_tables {
                store
                    .create_tables()
                    .await
                    .map_err(|e| format!("cannot create the DynamoDB tables: {e}"))?;
            }
            Ok(OpenStore {
                keys: store.clone(),
                usage: store.clone(),
                limiter: store,
                description: format!("DynamoDB (tables {keys_table}, {usage_table})"),
                shared: true,
                sqlite: None,
                local: None,
            })
        }
    }
}
