//! Elastic IPs: public addresses an account holds (from the same pool as the addresses
//! instances get at launch) and moves between its instances. An associated elastic IP *is*
//! the instance's public address: it replaces the pool address, survives stop/start, and
//! is let go (not released) when the instance terminates. Disassociating gives a running
//! instance that asked for a public address a fresh one from the pool, as on EC2.

use sqlx::{AnyConnection, Row};

use super::billing;
use super::filter::{self, Filterable};
use super::instance_state::InstanceState;
use super::instances::allocate_public_ip;
use super::model::{Caller, Tags};
use super::tags::{not_found_for, put_tags, tags_for};
use super::Control;
use crate::api::error::{ApiError, ApiResult};
use crate::api::query::{Filter, TagSpec};
use crate::ids::{AccountId, AllocationId, AssociationId, InstanceId};
use crate::store::{self, instances as db, parse_ts, ts};

/// Elastic IPs per account, as EC2's default quota.
pub const MAX_ADDRESSES: usize = 5;

#[derive(Debug, Clone)]
pub struct Address {
    pub id: AllocationId,
    pub owner: AccountId,
    pub public_ip: String,
    pub instance_id: Option<String>,
    pub association_id: Option<String>,
    /// The associated instance's private address and interface (filled when described).
    pub private_ip: Option<String>,
    pub network_interface_id: Option<String>,
    pub allocated_at: chrono::DateTime<chrono::Utc>,
    pub tags: Tags,
}

impl Filterable for Address {
    const FILTERS: &'static [&'static str] = &[
        "allocation-id",
        "association-id",
        "domain",
        "instance-id",
        "network-interface-id",
        "network-interface-owner-id",
        "private-ip-address",
        "public-ip",
    ];
    fn filter_values(&self, name: &str) -> Vec<String> {
        match name {
            "allocation-id" => vec![self.id.to_string()],
            "association-id" => self.association_id.clone().into_iter().collect(),
            "domain" => vec!["vpc".into()],
            "instance-id" => self.instance_id.clone().into_iter().collect(),
            "network-interface-id" => self.network_interface_id.clone().into_iter().collect(),
            "network-interface-owner-id" => {
                self.instance_id.as_ref().map(|_| self.owner.to_string()).into_iter().collect()
            }
            "private-ip-address" => self.private_ip.clone().into_iter().collect(),
            "public-ip" => vec![self.public_ip.clone()],
            _ => vec![],
        }
    }
    fn tags(&self) -> &Tags {
        &self.tags
    }
    fn sort_key(&self) -> &str {
        self.id.as_str()
    }
}

fn from_row(r: &sqlx::any::AnyRow) -> sqlx::Result<Address> {
    Ok(Address {
        id: AllocationId::from_db(r.try_get("id")?),
        owner: AccountId::from_db(r.try_get("account_id")?),
        public_ip: r.try_get("public_ip")?,
        instance_id: r.try_get("instance_id")?,
        association_id: r.try_get("association_id")?,
        private_ip: None,
        network_interface_id: None,
        allocated_at: parse_ts(&r.try_get::<String, _>("allocated_at")?),
        tags: Vec::new(),
    })
}

pub async fn of_account(c: &mut AnyConnection, account: &AccountId) -> sqlx::Result<Vec<Address>> {
    let rows = sqlx::query("SELECT * FROM addresses WHERE account_id = $1 ORDER BY allocated_at, id")
        .bind(account.as_str())
        .fetch_all(c)
        .await?;
    rows.iter().map(from_row).collect()
}

async fn set_association(
    c: &mut AnyConnection,
    id: &AllocationId,
    instance: Option<&str>,
    association: Option<&str>,
) -> sqlx::Result<()> {
    sqlx::query("UPDATE addresses SET instance_id = $1, association_id = $2 WHERE id = $3")
        .bind(instance)
        .bind(association)
        .bind(id.as_str())
        .execute(c)
        .await?;
    Ok(())
}

/// Which address a request names: by allocation id or by public IP.
#[derive(Debug, Clone)]
pub enum AddressRef {
    Allocation(String),
    PublicIp(String),
}

fn address_not_found(r: &AddressRef) -> ApiError {
    match r {
        AddressRef::Allocation(id) => not_found_for("elastic-ip", id),
        AddressRef::PublicIp(ip) => {
            ApiError::not_found("InvalidAddress.NotFound", format!("Address '{ip}' not found."))
        }
    }
}

fn pick<'a>(list: &'a [Address], r: &AddressRef) -> ApiResult<&'a Address> {
    if let AddressRef::Allocation(id) = r {
        AllocationId::parse(id)?;
    }
    list.iter()
        .find(|a| match r {
            AddressRef::Allocation(id) => a.id.as_str() == id,
            AddressRef::PublicIp(ip) => &a.public_ip == ip,
        })
        .ok_or_else(|| address_not_found(r))
}

impl Control {
    pub async fn allocate_address(
        &self,
        caller: &Caller,
        domain: Option<&str>,
        specs: &[TagSpec],
    ) -> ApiResult<Address> {
        if let Some(d) = domain.filter(|d| *d != "vpc") {
            return Err(ApiError::invalid_value(format!(
                "Invalid value '{d}' for domain: only vpc addresses exist (EC2-Classic is retired)"
            )));
        }
        let tags = tags_for(specs, "elastic-ip")?;
        let mut tx = self.store().begin_write().await?;
        let c = tx.conn();
        if of_account(c, &caller.account_id).await?.len() >= MAX_ADDRESSES {
            return Err(ApiError::LimitExceeded {
                code: "AddressLimitExceeded",
                message: "The maximum number of addresses has been reached.".into(),
            });
        }
        let mut taken = db::public_ips_in_use(c).await?;
        let ip = allocate_public_ip(&self.public_pool, &mut taken)?;
        let a = Address {
            id: AllocationId::generate(),
            owner: caller.account_id.clone(),
            public_ip: ip,
            instance_id: None,
            association_id: None,
            private_ip: None,
            network_interface_id: None,
            allocated_at: chrono::Utc::now(),
            tags: tags.clone(),
        };
        // Idle (billed) from allocation until it is on a running instance.
        sqlx::query(
            "INSERT INTO addresses (id, account_id, public_ip, allocated_at, idle_since) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(a.id.as_str())
        .bind(a.owner.as_str())
        .bind(&a.public_ip)
        .bind(ts(&a.allocated_at))
        .bind(ts(&a.allocated_at))
        .execute(&mut *c)
        .await?;
        put_tags(c, &caller.account_id, a.id.as_str(), "elastic-ip", &tags).await?;
        tx.commit().await?;
        Ok(a)
    }

    pub async fn describe_addresses(
        &self,
        caller: &Caller,
        public_ips: &[String],
        allocation_ids: &[String],
        filters: &[Filter],
    ) -> ApiResult<Vec<Address>> {
        filter::check_filters::<Address>(filters)?;
        let mut c = self.store().read().await?;
        let mut list = of_account(&mut c, &caller.account_id).await?;
        let mut tags = store::tags_by_type(&mut c, &caller.account_id, "elastic-ip").await?;
        let instances = db::of_account(&mut c, &caller.account_id).await?;
        for a in &mut list {
            a.tags = tags.remove(a.id.as_str()).unwrap_or_default();
            if let Some(i) = a.instance_id.as_ref().and_then(|id| instances.iter().find(|i| i.id.as_str() == id)) {
                a.private_ip = Some(i.private_ip.clone());
                a.network_interface_id = Some(super::gateways::eni_of(i.id.as_str()));
            }
        }
        for ip in public_ips {
            pick(&list, &AddressRef::PublicIp(ip.clone()))?;
        }
        for id in allocation_ids {
            pick(&list, &AddressRef::Allocation(id.clone()))?;
        }
        Ok(list
            .into_iter()
            .filter(|a| public_ips.is_empty() || public_ips.contains(&a.public_ip))
            .filter(|a| allocation_ids.is_empty() || allocation_ids.iter().any(|id| id == a.id.as_str()))
            .filter(|a| filter::matches(a, filters))
            .collect())
    }

    /// AssociateAddress: returns the association id.
    pub async fn associate_address(
        &self,
        caller: &Caller,
        address: &AddressRef,
        instance_id: &str,
        allow_reassociation: bool,
    ) -> ApiResult<AssociationId> {
        let instance_id = InstanceId::parse(instance_id)?;
        let mut tx = self.store().begin_write().await?;
        let c = tx.conn();
        let list = of_account(c, &caller.account_id).await?;
        let a = pick(&list, address)?.clone();
        let instance = db::by_id(c, &instance_id)
            .await?
            .filter(|i| i.owner == caller.account_id)
            .ok_or_else(|| not_found_for("instance", instance_id.as_str()))?;
        if matches!(instance.state, InstanceState::ShuttingDown | InstanceState::Terminated) {
            return Err(ApiError::IncorrectInstanceState(format!(
                "The instance '{instance_id}' is not in a valid state for this operation."
            )));
        }
        if let Some(other) = a.instance_id.as_deref().filter(|o| *o != instance_id.as_str()) {
            if !allow_reassociation {
                return Err(ApiError::Conflict {
                    code: "Resource.AlreadyAssociated",
                    message: format!("resource {} is already associated with associate-id {other}", a.id),
                });
            }
            // The instance it leaves gets what it would have without it.
            self.public_address_after_release(c, &InstanceId::from_db(other.to_owned()), &a.public_ip).await?;
        }
        // An elastic IP the instance already had goes back to the account, idle.
        let now = chrono::Utc::now();
        if let Some(prev) = list.iter().find(|x| x.instance_id.as_deref() == Some(instance_id.as_str()) && x.id != a.id)
        {
            set_association(c, &prev.id, None, None).await?;
            billing::set_address_idle(c, prev.id.as_str(), true, &self.catalogue, now).await?;
        }
        let assoc = AssociationId::generate();
        set_association(c, &a.id, Some(instance_id.as_str()), Some(assoc.as_str())).await?;
        billing::set_address_idle(c, a.id.as_str(), instance.state != InstanceState::Running, &self.catalogue, now)
            .await?;
        db::set_public_ip(c, &instance_id, Some(&a.public_ip)).await?;
        tx.commit().await?;
        self.agent_wake.notify_one();
        Ok(assoc)
    }

    /// An instance loses the elastic IP `ip`: a pending or running instance that asked for a
    /// public address gets one from the pool, any other has none.
    async fn public_address_after_release(&self, c: &mut AnyConnection, id: &InstanceId, ip: &str) -> ApiResult<()> {
        let Some(i) = db::by_id(c, id).await? else { return Ok(()) };
        if i.public_ip.as_deref() != Some(ip) {
            return Ok(());
        }
        db::set_public_ip(c, id, None).await?;
        if i.wants_public_ip && matches!(i.state, InstanceState::Pending | InstanceState::Running) {
            let mut taken = db::public_ips_in_use(c).await?;
            let fresh = allocate_public_ip(&self.public_pool, &mut taken)?;
            db::set_public_ip(c, id, Some(&fresh)).await?;
        }
        Ok(())
    }

    pub async fn disassociate_address(&self, caller: &Caller, association: &AddressRef) -> ApiResult<()> {
        let mut tx = self.store().begin_write().await?;
        let c = tx.conn();
        let list = of_account(c, &caller.account_id).await?;
        let a = match association {
            AddressRef::Allocation(assoc) => {
                AssociationId::parse(assoc)?;
                list.iter().find(|a| a.association_id.as_deref() == Some(assoc.as_str())).ok_or_else(|| {
                    ApiError::not_found(
                        "InvalidAssociationID.NotFound",
                        format!("The association ID '{assoc}' does not exist"),
                    )
                })?
            }
            AddressRef::PublicIp(_) => pick(&list, association)?,
        }
        .clone();
        let Some(instance) = a.instance_id.clone() else {
            return Err(ApiError::not_found(
                "InvalidAssociationID.NotFound",
                format!("The address '{}' is not associated", a.public_ip),
            ));
        };
        set_association(c, &a.id, None, None).await?;
        billing::set_address_idle(c, a.id.as_str(), true, &self.catalogue, chrono::Utc::now()).await?;
        self.public_address_after_release(c, &InstanceId::from_db(instance), &a.public_ip).await?;
        tx.commit().await?;
        self.agent_wake.notify_one();
        Ok(())
    }

    pub async fn release_address(&self, caller: &Caller, address: &AddressRef) -> ApiResult<()> {
        let mut tx = self.store().begin_write().await?;
        let c = tx.conn();
        let list = of_account(c, &caller.account_id).await?;
        let a = pick(&list, address)?.clone();
        if a.instance_id.is_some() {
            return Err(ApiError::InvalidIpAddressInUse("Address is in use.".into()));
        }
        // The idle interval ends with the allocation.
        billing::set_address_idle(c, a.id.as_str(), false, &self.catalogue, chrono::Utc::now()).await?;
        sqlx::query("DELETE FROM addresses WHERE id = $1").bind(a.id.as_str()).execute(&mut *c).await?;
        store::delete_all_tags(c, a.id.as_str()).await?;
        tx.commit().await?;
        Ok(())
    }
}
