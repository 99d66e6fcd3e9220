//! The meter and the bill. Pay for what runs: an instance is billed per second while it is
//! `running` (from the agent's report that it runs to the request or event that ends it),
//! with a one-minute minimum for each start, at the hourly price of its type when it started
//! (a resize happens while stopped, so it bills from the next start). Volumes (root volumes
//! included) are billed per GB-month from creation to deletion, whatever the instance's
//! state; snapshots likewise at their volume's size. Elastic IPs are
//! billed per second at an hourly price while they are not on a running instance (from
//! allocation, disassociation or the instance leaving `running`, to association with a
//! running instance, its start, or release).
//!
//! Usage records are append-only rows written when an interval ends; intervals still open
//! come from the instances' current state when a bill is made. The bill is always computed
//! from intervals, never from a running counter, and every function here takes `now`, so the
//! rules are tested with a fake clock.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::{AnyConnection, Row};

use super::instance_state::InstanceState;
use super::instances::Instance;
use crate::catalog::Catalogue;
use crate::ids::AccountId;
use crate::store::{parse_ts, ts};

/// Hours in a billing month, as AWS prorates GB-months.
pub const HOURS_PER_MONTH: f64 = 730.0;
/// Each start of an instance bills at least this long.
pub const MINIMUM_SECONDS: i64 = 60;
pub const COMPUTE_SERVICE: &str = "Amazon Elastic Compute Cloud - Compute";
pub const STORAGE_SERVICE: &str = "EC2 - Other";

#[derive(Debug, Clone, PartialEq)]
pub struct Interval {
    pub account_id: String,
    pub resource_id: String,
    /// `instance`, `volume` or `address`.
    pub resource_type: String,
    /// `BoxUsage:t3.micro`, `EBS:VolumeUsage.gp3`.
    pub usage_type: String,
    pub service: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    /// USD per hour (instances) or per GB-month (volumes).
    pub unit_price: f64,
    pub size_gb: i64,
}

impl Interval {
    /// The instance type's running interval that ends `now`.
    pub fn running(i: &Instance, catalogue: &Catalogue, now: DateTime<Utc>) -> Interval {
        Interval {
            account_id: i.owner.to_string(),
            resource_id: i.id.to_string(),
            resource_type: "instance".into(),
            usage_type: format!("BoxUsage:{}", i.instance_type),
            service: COMPUTE_SERVICE.into(),
            start: i.state_changed_at,
            end: now,
            unit_price: catalogue.get(&i.instance_type).map(|t| t.price_per_hour).unwrap_or(0.0),
            size_gb: 0,
        }
    }

    /// An elastic IP's idle interval.
    pub fn idle_address(
        account: &str,
        allocation: &str,
        catalogue: &Catalogue,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> Interval {
        Interval {
            account_id: account.to_owned(),
            resource_id: allocation.to_owned(),
            resource_type: "address".into(),
            usage_type: "ElasticIP:IdleAddress".into(),
            service: STORAGE_SERVICE.into(),
            start,
            end,
            unit_price: catalogue.addresses.idle_eip_hour,
            size_gb: 0,
        }
    }

    pub fn unit(&self) -> &'static str {
        if self.per_gb_month() {
            "GB-Mo"
        } else {
            "Hrs"
        }
    }

    fn per_gb_month(&self) -> bool {
        matches!(self.resource_type.as_str(), "volume" | "snapshot")
    }

    /// What the part of this interval inside `[from, to)` bills: (quantity, cost). An
    /// instance's one-minute minimum is counted where its start falls.
    pub fn charge(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> (f64, f64) {
        let start = self.start.max(from);
        let end = self.end.min(to);
        let mut seconds = (end - start).num_milliseconds().max(0) as f64 / 1000.0;
        if self.resource_type == "instance" && self.start >= from && self.start < to {
            let whole = (self.end - self.start).num_milliseconds().max(0) as f64 / 1000.0;
            if whole < MINIMUM_SECONDS as f64 {
                seconds += MINIMUM_SECONDS as f64 - whole;
            }
        }
        let hours = seconds / 3600.0;
        let quantity = if self.per_gb_month() { self.size_gb as f64 * hours / HOURS_PER_MONTH } else { hours };
        (quantity, quantity * self.unit_price)
    }
}

/// Appends a finished interval.
pub async fn record(c: &mut AnyConnection, i: &Interval) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO usage_records (account_id, resource_id, resource_type, usage_type, service, start_time, end_time, unit_price, size_gb)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(&i.account_id)
    .bind(&i.resource_id)
    .bind(&i.resource_type)
    .bind(&i.usage_type)
    .bind(&i.service)
    .bind(ts(&i.start))
    .bind(ts(&i.end))
    .bind(i.unit_price)
    .bind(i.size_gb)
    .execute(c)
    .await?;
    Ok(())
}

/// Writes what a state change ends: the running interval when an instance leaves `running`,
/// and opens or closes its elastic IP's idle interval. (Its root volume is a volume, metered
/// from the launch until it is deleted.)
pub async fn meter_transition(
    c: &mut AnyConnection,
    i: &Instance,
    next: InstanceState,
    catalogue: &Catalogue,
    now: DateTime<Utc>,
) -> sqlx::Result<()> {
    if i.state == InstanceState::Running && next != InstanceState::Running {
        record(c, &Interval::running(i, catalogue, now)).await?;
    }
    // Its elastic IP is idle exactly while it does not run.
    let eips: Vec<(String,)> = sqlx::query_as("SELECT id FROM addresses WHERE instance_id = $1")
        .bind(i.id.as_str())
        .fetch_all(&mut *c)
        .await?;
    for (id,) in eips {
        set_address_idle(c, &id, next != InstanceState::Running, catalogue, now).await?;
    }
    Ok(())
}

/// Opens or closes an elastic IP's idle interval; closing appends it to the records.
pub async fn set_address_idle(
    c: &mut AnyConnection,
    allocation: &str,
    idle: bool,
    catalogue: &Catalogue,
    now: DateTime<Utc>,
) -> sqlx::Result<()> {
    let Some(row) = sqlx::query("SELECT account_id, idle_since FROM addresses WHERE id = $1")
        .bind(allocation)
        .fetch_optional(&mut *c)
        .await?
    else {
        return Ok(());
    };
    let account: String = row.try_get("account_id")?;
    let since: Option<String> = row.try_get("idle_since")?;
    match (since, idle) {
        (None, true) => {
            sqlx::query("UPDATE addresses SET idle_since = $1 WHERE id = $2")
                .bind(ts(&now))
                .bind(allocation)
                .execute(&mut *c)
                .await?;
        }
        (Some(start), false) => {
            record(c, &Interval::idle_address(&account, allocation, catalogue, parse_ts(&start), now)).await?;
            sqlx::query("UPDATE addresses SET idle_since = NULL WHERE id = $1")
                .bind(allocation)
                .execute(&mut *c)
                .await?;
        }
        _ => {}
    }
    Ok(())
}

/// Idle intervals of elastic IPs still open at `now`.
pub async fn open_address_intervals(
    c: &mut AnyConnection,
    account: Option<&AccountId>,
    catalogue: &Catalogue,
    now: DateTime<Utc>,
) -> sqlx::Result<Vec<Interval>> {
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT account_id, id, idle_since FROM addresses WHERE idle_since IS NOT NULL AND ($1 IS NULL OR account_id = $2)",
    )
    .bind(account.map(|a| a.as_str().to_owned()))
    .bind(account.map(|a| a.as_str().to_owned()))
    .fetch_all(c)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(acct, id, since)| Interval::idle_address(&acct, &id, catalogue, parse_ts(&since), now))
        .collect())
}

/// Finished intervals that overlap `[from, to)`, of one account or all.
pub async fn recorded(
    c: &mut AnyConnection,
    account: Option<&AccountId>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> sqlx::Result<Vec<Interval>> {
    let rows = sqlx::query(
        "SELECT * FROM usage_records WHERE ($1 IS NULL OR account_id = $2) AND start_time < $3 AND end_time > $4 ORDER BY id",
    )
    .bind(account.map(|a| a.as_str().to_owned()))
    .bind(account.map(|a| a.as_str().to_owned()))
    .bind(ts(&to))
    .bind(ts(&from))
    .fetch_all(c)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Interval {
                account_id: r.try_get("account_id")?,
                resource_id: r.try_get("resource_id")?,
                resource_type: r.try_get("resource_type")?,
                usage_type: r.try_get("usage_type")?,
                service: r.try_get("service")?,
                start: parse_ts(&r.try_get::<String, _>("start_time")?),
                end: parse_ts(&r.try_get::<String, _>("end_time")?),
                unit_price: r.try_get("unit_price")?,
                size_gb: r.try_get("size_gb")?,
            })
        })
        .collect()
}

/// Intervals still open at `now`, from the instances' current state.
pub fn open_intervals(live: &[Instance], catalogue: &Catalogue, now: DateTime<Utc>) -> Vec<Interval> {
    let mut out = Vec::new();
    for i in live {
        if i.state == InstanceState::Running {
            out.push(Interval::running(i, catalogue, now));
        }
    }
    out
}

/// One line of a bill: a resource's usage of one type.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BillLine {
    pub account_id: String,
    pub resource_id: String,
    pub resource_type: String,
    pub usage_type: String,
    pub service: String,
    pub quantity: f64,
    pub unit: String,
    pub cost: f64,
}

/// Sums intervals over `[from, to)` into lines per (account, resource, usage type).
pub fn bill(intervals: &[Interval], from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<BillLine> {
    let mut lines: BTreeMap<(String, String, String), BillLine> = BTreeMap::new();
    for i in intervals {
        let (q, cost) = i.charge(from, to);
        if q <= 0.0 {
            continue;
        }
        let line =
            lines.entry((i.account_id.clone(), i.resource_id.clone(), i.usage_type.clone())).or_insert_with(|| {
                BillLine {
                    account_id: i.account_id.clone(),
                    resource_id: i.resource_id.clone(),
                    resource_type: i.resource_type.clone(),
                    usage_type: i.usage_type.clone(),
                    service: i.service.clone(),
                    quantity: 0.0,
                    unit: i.unit().into(),
                    cost: 0.0,
                }
            });
        line.quantity += q;
        line.cost += cost;
    }
    lines.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone};

    fn t(h: i64, m: i64, s: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap()
            + Duration::hours(h)
            + Duration::minutes(m)
            + Duration::seconds(s)
    }

    fn run(start: DateTime<Utc>, end: DateTime<Utc>, price: f64) -> Interval {
        Interval {
            account_id: "111111111111".into(),
            resource_id: "i-1".into(),
            resource_type: "instance".into(),
            usage_type: "BoxUsage:t3.micro".into(),
            service: COMPUTE_SERVICE.into(),
            start,
            end,
            unit_price: price,
            size_gb: 0,
        }
    }

    #[test]
    fn per_second_with_a_one_minute_minimum_per_start() {
        let day = (t(0, 0, 0), t(24, 0, 0));
        let (q, c) = run(t(1, 0, 0), t(2, 30, 0), 0.0104).charge(day.0, day.1);
        assert!((q - 1.5).abs() < 1e-9 && (c - 0.0156).abs() < 1e-9);
        // 10 seconds bill one minute.
        let (q, _) = run(t(1, 0, 0), t(1, 0, 10), 1.0).charge(day.0, day.1);
        assert!((q - 60.0 / 3600.0).abs() < 1e-9);
        // Two short starts bill two minutes: the minimum is per start.
        let b = bill(&[run(t(1, 0, 0), t(1, 0, 5), 1.0), run(t(2, 0, 0), t(2, 0, 5), 1.0)], day.0, day.1);
        assert!((b[0].quantity - 120.0 / 3600.0).abs() < 1e-9);
    }

    #[test]
    fn stopped_time_costs_nothing_and_windows_split_intervals() {
        // Running 10:00-11:00, stopped, running again 15:00-15:30.
        let ivs = [run(t(10, 0, 0), t(11, 0, 0), 2.0), run(t(15, 0, 0), t(15, 30, 0), 2.0)];
        let b = bill(&ivs, t(0, 0, 0), t(24, 0, 0));
        assert!((b[0].quantity - 1.5).abs() < 1e-9 && (b[0].cost - 3.0).abs() < 1e-9);
        // An interval across midnight splits between days; the minimum stays with its start.
        let night = run(t(23, 30, 0), t(24, 30, 0), 1.0);
        assert!((night.charge(t(0, 0, 0), t(24, 0, 0)).0 - 0.5).abs() < 1e-9);
        assert!((night.charge(t(24, 0, 0), t(48, 0, 0)).0 - 0.5).abs() < 1e-9);
        let short = run(t(23, 59, 50), t(24, 0, 5), 1.0);
        assert!((short.charge(t(0, 0, 0), t(24, 0, 0)).0 - 55.0 / 3600.0).abs() < 1e-9, "10 s + 45 s of minimum");
        assert!((short.charge(t(24, 0, 0), t(48, 0, 0)).0 - 5.0 / 3600.0).abs() < 1e-9);
    }

    #[test]
    fn a_resize_bills_each_start_at_its_own_price() {
        let small = run(t(0, 0, 0), t(1, 0, 0), 0.0104);
        let mut big = run(t(2, 0, 0), t(3, 0, 0), 0.0832);
        big.usage_type = "BoxUsage:t3.large".into();
        let b = bill(&[small, big], t(0, 0, 0), t(24, 0, 0));
        assert_eq!(b.len(), 2);
        let total: f64 = b.iter().map(|l| l.cost).sum();
        assert!((total - (0.0104 + 0.0832)).abs() < 1e-9);
    }

    #[test]
    fn idle_elastic_ips_bill_hours() {
        let c = Catalogue::parse(crate::catalog::DEFAULT_CATALOGUE).unwrap();
        let v = Interval::idle_address("111111111111", "eipalloc-1", &c, t(0, 0, 0), t(2, 30, 0));
        let (q, cost) = v.charge(t(0, 0, 0), t(24, 0, 0));
        assert!((q - 2.5).abs() < 1e-9);
        assert!((cost - 2.5 * 0.005).abs() < 1e-9);
        assert_eq!(v.unit(), "Hrs");
        // No minimum: ten idle seconds bill ten seconds.
        let short = Interval::idle_address("111111111111", "eipalloc-1", &c, t(0, 0, 0), t(0, 0, 10));
        assert!((short.charge(t(0, 0, 0), t(24, 0, 0)).0 - 10.0 / 3600.0).abs() < 1e-9);
    }

    #[test]
    fn volumes_bill_gb_months() {
        let v = Interval {
            resource_type: "volume".into(),
            usage_type: "EBS:VolumeUsage.gp3".into(),
            service: STORAGE_SERVICE.into(),
            unit_price: 0.08,
            size_gb: 8,
            ..run(t(0, 0, 0), t(73, 0, 0), 0.0)
        };
        let (q, c) = v.charge(t(0, 0, 0), t(1000, 0, 0));
        assert!((q - 8.0 * 73.0 / 730.0).abs() < 1e-9);
        assert!((c - 0.064).abs() < 1e-9);
        assert_eq!(v.unit(), "GB-Mo");
    }
}
