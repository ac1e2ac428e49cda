//! Usage summaries: hourly counters, kept as records are written, and the
//! `GET /admin/usage/summary` answer built from them.
//!
//! Every store keeps one [`Counters`] row per (UTC hour, key, model alias)
//! and adds each record to its row when it writes the record (SQLite: a
//! table updated in the writer's transaction; Workers: a table in the key's
//! Durable Object; Lambda: an item per key and hour updated with `ADD`). A
//! summary then reads at most hours × keys × models rows, whatever the
//! number of requests, and [`summarize`] folds them into hour or day
//! buckets, totals, and the top keys and models by spend.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::metering::pricing::usd;
use crate::metering::usage::UsageRecord;
use crate::wire::time::format_rfc3339;

/// Seconds in an hour and in a day.
pub const HOUR: u64 = 3_600;
pub const DAY: u64 = 86_400;

/// What a set of requests added up to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Counters {
    pub requests: u64,
    /// Answered 400 or above (refusals by a limit included).
    pub errors: u64,
    /// Refused by a rate limit (`rpm`, `rpd`, `tpm`).
    pub rate_limited: u64,
    /// Refused by the budget.
    pub budget_refused: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub cached_tokens: u64,
    pub cost_nanos: u64,
    /// Requests with tokens but no known price.
    pub unpriced: u64,
}

impl Counters {
    /// One record's contribution.
    pub fn of(r: &UsageRecord) -> Counters {
        let refused = r.refused_by.as_deref();
        Counters {
            requests: 1,
            errors: u64::from(r.status >= 400),
            rate_limited: u64::from(refused.is_some_and(|l| l != "budget")),
            budget_refused: u64::from(refused == Some("budget")),
            prompt_tokens: r.usage.prompt_tokens,
            completion_tokens: r.usage.completion_tokens,
            total_tokens: r.usage.total_tokens,
            cached_tokens: r.usage.cached_tokens,
            cost_nanos: r.cost_nanos.unwrap_or(0),
            unpriced: u64::from(r.cost_nanos.is_none() && r.usage.total_tokens > 0),
        }
    }

    pub fn add(&mut self, o: &Counters) {
        self.requests += o.requests;
        self.errors += o.errors;
        self.rate_limited += o.rate_limited;
        self.budget_refused += o.budget_refused;
        self.prompt_tokens += o.prompt_tokens;
        self.completion_tokens += o.completion_tokens;
        self.total_tokens += o.total_tokens;
        self.cached_tokens += o.cached_tokens;
        self.cost_nanos += o.cost_nanos;
        self.unpriced += o.unpriced;
    }

    /// The fields and their values, for stores that keep them as columns
    /// or attributes (the same names as the struct's).
    pub fn fields(&self) -> [(&'static str, u64); 10] {
        [
            ("requests", self.requests),
            ("errors", self.errors),
            ("rate_limited", self.rate_limited),
            ("budget_refused", self.budget_refused),
            ("prompt_tokens", self.prompt_tokens),
            ("completion_tokens", self.completion_tokens),
            ("total_tokens", self.total_tokens),
            ("cached_tokens", self.cached_tokens),
            ("cost_nanos", self.cost_nanos),
            ("unpriced", self.unpriced),
        ]
    }

    /// Builds counters from `(name, value)` pairs named as in [`Counters::fields`].
    pub fn from_fields<'a>(pairs: impl IntoIterator<Item = (&'a str, u64)>) -> Counters {
        let mut c = Counters::default();
        for (k, v) in pairs {
            match k {
                "requests" => c.requests = v,
                "errors" => c.errors = v,
                "rate_limited" => c.rate_limited = v,
                "budget_refused" => c.budget_refused = v,
                "prompt_tokens" => c.prompt_tokens = v,
                "completion_tokens" => c.completion_tokens = v,
                "total_tokens" => c.total_tokens = v,
                "cached_tokens" => c.cached_tokens = v,
                "cost_nanos" => c.cost_nanos = v,
                "unpriced" => c.unpriced = v,
                _ => {}
            }
        }
        c
    }

    fn to_json(self) -> Value {
        json!({
            "requests": self.requests,
            "errors": self.errors,
            "refused": self.rate_limited + self.budget_refused,
            "rate_limited": self.rate_limited,
            "budget_refused": self.budget_refused,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "cached_tokens": self.cached_tokens,
            "cost_nano_usd": self.cost_nanos,
            "cost_usd": usd(self.cost_nanos),
            "unpriced_requests": self.unpriced,
        })
    }
}

/// The counters of one (hour, key, model alias); of one day for stores
/// that keep day rows too (see [`SummaryQuery`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HourRow {
    /// Unix seconds of the hour's start.
    pub hour: u64,
    pub key_id: String,
    pub model: String,
    pub counters: Counters,
}

impl HourRow {
    /// The row a record adds to.
    pub fn of(r: &UsageRecord) -> HourRow {
        HourRow {
            hour: hour_of_ms(r.created_at_ms),
            key_id: r.key_id.clone(),
            model: r.model.clone(),
            counters: Counters::of(r),
        }
    }
}

/// The start of the UTC hour holding `ms`, in Unix seconds.
pub fn hour_of_ms(ms: u64) -> u64 {
    ms / 1000 / HOUR * HOUR
}

/// Bucket width of a summary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Bucket {
    #[default]
    Hour,
    Day,
}

impl Bucket {
    pub fn secs(self) -> u64 {
        match self {
            Bucket::Hour => HOUR,
            Bucket::Day => DAY,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Bucket::Hour => "hour",
            Bucket::Day => "day",
        }
    }
}

/// What `GET /admin/usage/summary` asks of a store: the counter rows in
/// `[since, until)` (Unix seconds aligned to `bucket`), optionally for one
/// key and one model alias. A store may answer with hour rows whatever the
/// bucket, or with day rows (`hour` = the day's start) when `bucket` is
/// [`Bucket::Day`] (the server keeps both, so a month is 30 rows per key
/// and model however sparse the traffic).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SummaryQuery {
    pub since: u64,
    pub until: u64,
    pub key_id: Option<String>,
    pub model: Option<String>,
    #[serde(default)]
    pub bucket: Bucket,
}

impl SummaryQuery {
    pub fn matches(&self, row: &HourRow) -> bool {
        row.hour >= self.since
            && row.hour < self.until
            && self.key_id.as_ref().is_none_or(|k| *k == row.key_id)
            && self.model.as_ref().is_none_or(|m| *m == row.model)
    }
}

/// Most buckets one summary may hold (a year of days, or 60 days of hours).
pub const MAX_BUCKETS: u64 = 1_440;

/// Entries in the top keys and top models.
const TOP: usize = 10;

/// Folds hour rows into the summary answer: every bucket from `since` to
/// `until` (empty ones included, so a chart has no gaps), totals, and the
/// top keys and models by spend, then requests. `key_name` names a key id
/// (deleted keys have none).
pub fn summarize(
    q: &SummaryQuery,
    bucket: Bucket,
    rows: &[HourRow],
    key_name: &dyn Fn(&str) -> Option<String>,
) -> Value {
    let width = bucket.secs();
    let first = q.since / width * width;
    let mut buckets: BTreeMap<u64, Counters> = BTreeMap::new();
    let mut start = first;
    while start < q.until {
        buckets.insert(start, Counters::default());
        start += width;
    }
    let mut totals = Counters::default();
    let mut by_key: BTreeMap<&str, Counters> = BTreeMap::new();
    let mut by_model: BTreeMap<&str, Counters> = BTreeMap::new();
    for row in rows.iter().filter(|r| q.matches(r)) {
        let c = &row.counters;
        buckets.entry(row.hour / width * width).or_default().add(c);
        totals.add(c);
        by_key.entry(&row.key_id).or_default().add(c);
        by_model.entry(&row.model).or_default().add(c);
    }
    let top = |m: BTreeMap<&str, Counters>, field: &str| -> Vec<Value> {
        let mut v: Vec<(&str, Counters)> = m.into_iter().collect();
        v.sort_by(|a, b| {
            (b.1.cost_nanos, b.1.requests, a.0).cmp(&(a.1.cost_nanos, a.1.requests, b.0))
        });
        v.into_iter()
            .take(TOP)
            .map(|(name, c)| {
                let mut o = c.to_json();
                if let Some(obj) = o.as_object_mut() {
                    obj.insert(field.into(), Value::String(name.to_owned()));
                    if field == "key_id" {
                        obj.insert("name".into(), key_name(name).into());
                    }
                }
                o
            })
            .collect()
    };
    json!({
        "object": "usage_summary",
        "since": format_rfc3339(q.since),
        "until": format_rfc3339(q.until),
        "bucket": bucket.name(),
        "buckets": buckets.into_iter().map(|(start, c)| {
            let mut o = c.to_json();
            if let Some(obj) = o.as_object_mut() {
                obj.insert("start".into(), format_rfc3339(start).into());
                obj.insert("start_unix".into(), start.into());
            }
            o
        }).collect::<Vec<_>>(),
        "totals": totals.to_json(),
        "top_keys": top(by_key, "key_id"),
        "top_models": top(by_model, "model"),
    })
}

/// Adds `row` into `rows`, merging with the row of the same hour, key and model.
pub fn merge_into(rows: &mut Vec<HourRow>, row: HourRow) {
    match rows
        .iter_mut()
        .find(|r| r.hour == row.hour && r.key_id == row.key_id && r.model == row.model)
    {
        Some(r) => r.counters.add(&row.counters),
        None => rows.push(row),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metering::usage::TokenUsage;

    fn record(ms: u64, key: &str, model: &str, cost: u64, refused: Option<&str>) -> UsageRecord {
        UsageRecord {
            request_id: format!("req_{ms}"),
            key_id: key.into(),
            model: model.into(),
            provider: None,
            provider_model: None,
            endpoint: "/v1/chat/completions".into(),
            status: if refused.is_some() { 429 } else { 200 },
            streamed: false,
            usage: TokenUsage {
                prompt_tokens: 10,
                completion_tokens: 5,
                total_tokens: 15,
                ..Default::default()
            },
            estimated_prompt_tokens: 0,
            estimated_completion_tokens: 0,
            cost_nanos: Some(cost),
            refused_by: refused.map(str::to_owned),
            latency_us: 0,
            upstream_latency_us: 0,
            created_at_ms: ms,
            attempts: 0,
            failed_attempts: Vec::new(),
            served_alias: None,
            trace_id: None,
            traceparent: None,
        }
    }

    #[test]
    fn buckets_totals_and_tops() {
        let day0 = 1_767_225_600; // 2026-01-01T00:00:00Z
        let mut rows = Vec::new();
        for r in [
            record(day0 * 1000 + 10, "k1", "a", 100, None),
            record(day0 * 1000 + 20, "k1", "a", 100, None),
            record((day0 + 2 * HOUR) * 1000, "k2", "b", 500, None),
            record((day0 + DAY + 5) * 1000, "k1", "b", 0, Some("rpm")),
            record((day0 + DAY + 6) * 1000, "k1", "b", 0, Some("budget")),
        ] {
            merge_into(&mut rows, HourRow::of(&r));
        }
        assert_eq!(rows.len(), 3);
        let q = SummaryQuery {
            since: day0,
            until: day0 + 2 * DAY,
            key_id: None,
            model: None,
            bucket: Bucket::Hour,
        };
        let names = |id: &str| (id == "k1").then(|| "first".to_owned());
        let days = summarize(&q, Bucket::Day, &rows, &names);
        assert_eq!(days["buckets"].as_array().unwrap().len(), 2);
        assert_eq!(days["buckets"][0]["requests"], 3);
        assert_eq!(days["buckets"][1]["refused"], 2);
        assert_eq!(days["buckets"][1]["rate_limited"], 1);
        assert_eq!(days["totals"]["requests"], 5);
        assert_eq!(days["totals"]["cost_nano_usd"], 700);
        assert_eq!(days["totals"]["total_tokens"], 75);
        assert_eq!(days["top_keys"][0]["key_id"], "k2");
        assert_eq!(days["top_keys"][1]["name"], "first");
        assert_eq!(days["top_models"][0]["model"], "b");
        let hours = summarize(&q, Bucket::Hour, &rows, &names);
        assert_eq!(hours["buckets"].as_array().unwrap().len(), 48);
        assert_eq!(hours["buckets"][2]["cost_nano_usd"], 500);
        let only_k1 = SummaryQuery {
            key_id: Some("k1".into()),
            ..q
        };
        assert_eq!(
            summarize(&only_k1, Bucket::Day, &rows, &names)["totals"]["requests"],
            4
        );
    }

    #[test]
    fn counters_fields_round_trip() {
        let c = Counters::of(&record(0, "k", "m", 7, None));
        assert_eq!(Counters::from_fields(c.fields()), c);
    }
}
