//! What an agent needs of the control plane, as one interface: its duties (the instances
//! placed on its host, and which volumes and snapshots are its work), the reports it sends
//! (instance events, volume and snapshot results, heartbeats) and what it reads to act
//! (images, network views, the catalogue). `strato serve`'s in-process agent uses the
//! `Control` itself; an agent on another machine would use the same calls over the network
//! (not built yet: issue 8).

use std::future::Future;
use std::path::{Path, PathBuf};

use crate::catalog::Catalogue;
use crate::control::hosts::Duties;
use crate::control::instance_state::{Event, InstanceState};
use crate::control::instances::Instance;
use crate::control::model::Image;
use crate::control::snapshots::Snapshot;
use crate::control::volumes::{Modification, Volume};
use crate::control::Control;
use crate::ids::{HostId, InstanceId, SnapshotId, VolumeId};
use crate::net::rules::VpcView;

type R<T> = anyhow::Result<T>;

pub trait Link: Send + Sync + 'static {
    // What it reads.
    fn duties(&self, host: &HostId) -> impl Future<Output = R<Duties>> + Send;
    fn all_volumes(&self) -> impl Future<Output = R<Vec<Volume>>> + Send;
    fn modifying_volumes(&self) -> impl Future<Output = R<Vec<Modification>>> + Send;
    fn all_snapshots(&self) -> impl Future<Output = R<Vec<Snapshot>>> + Send;
    fn network_views(&self, host: &HostId, instances: &[Instance]) -> impl Future<Output = R<Vec<VpcView>>> + Send;
    fn image_ids(&self) -> impl Future<Output = R<Vec<String>>> + Send;
    fn image_for_launch(&self, id: &str) -> impl Future<Output = R<Option<Image>>> + Send;
    fn catalogue(&self) -> &Catalogue;
    fn region_name(&self) -> &str;

    // What it reports.
    fn heartbeat(&self, host: &HostId) -> impl Future<Output = R<()>> + Send;
    fn apply(
        &self,
        id: &InstanceId,
        generation: i64,
        event: Event,
        reason: Option<(&str, &str)>,
    ) -> impl Future<Output = R<Option<InstanceState>>> + Send;
    fn set_instance_flag(&self, id: &InstanceId, flag: &str, value: bool) -> impl Future<Output = R<()>> + Send;
    fn volume_created(&self, id: &VolumeId) -> impl Future<Output = R<()>> + Send;
    fn volume_deleted(&self, id: &VolumeId) -> impl Future<Output = R<()>> + Send;
    fn volume_attached(&self, id: &VolumeId) -> impl Future<Output = R<()>> + Send;
    fn volume_detached(&self, id: &VolumeId) -> impl Future<Output = R<()>> + Send;
    fn volume_modified(&self, id: &str, ok: bool) -> impl Future<Output = R<()>> + Send;
    fn snapshot_done(&self, id: &SnapshotId, ok: bool) -> impl Future<Output = R<()>> + Send;
    fn image_snapshot_done(&self, id: &SnapshotId, file: Option<&Path>) -> impl Future<Output = R<()>> + Send;

    // Where its shared files are, and how it waits.
    fn console_file(&self, instance_id: &str) -> PathBuf;
    fn volumes_dir(&self) -> PathBuf;
    fn snapshots_dir(&self) -> PathBuf;
    fn heartbeat_interval(&self) -> std::time::Duration;
    /// Returns after `at_most`, or earlier when the desired state may have changed.
    fn changed(&self, at_most: std::time::Duration) -> impl Future<Output = ()> + Send;
}

impl Link for Control {
    async fn duties(&self, host: &HostId) -> R<Duties> {
        Control::duties(self, host).await
    }
    async fn all_volumes(&self) -> R<Vec<Volume>> {
        Control::all_volumes(self).await
    }
    async fn modifying_volumes(&self) -> R<Vec<Modification>> {
        Control::modifying_volumes(self).await
    }
    async fn all_snapshots(&self) -> R<Vec<Snapshot>> {
        Control::all_snapshots(self).await
    }
    async fn network_views(&self, host: &HostId, instances: &[Instance]) -> R<Vec<VpcView>> {
        Control::network_views(self, host, instances).await
    }
    async fn image_ids(&self) -> R<Vec<String>> {
        Control::image_ids(self).await.map_err(crate::api::error::ApiError::into_anyhow)
    }
    async fn image_for_launch(&self, id: &str) -> R<Option<Image>> {
        Control::image_for_launch(self, id).await.map_err(crate::api::error::ApiError::into_anyhow)
    }
    fn catalogue(&self) -> &Catalogue {
        &self.catalogue
    }
    fn region_name(&self) -> &str {
        &self.region.name
    }
    async fn heartbeat(&self, host: &HostId) -> R<()> {
        Control::heartbeat(self, host).await
    }
    async fn apply(
        &self,
        id: &InstanceId,
        generation: i64,
        event: Event,
        reason: Option<(&str, &str)>,
    ) -> R<Option<InstanceState>> {
        Control::apply(self, id, generation, event, reason).await
    }
    async fn set_instance_flag(&self, id: &InstanceId, flag: &str, value: bool) -> R<()> {
        Control::set_instance_flag(self, id, flag, value).await
    }
    async fn volume_created(&self, id: &VolumeId) -> R<()> {
        Control::volume_created(self, id).await
    }
    async fn volume_deleted(&self, id: &VolumeId) -> R<()> {
        Control::volume_deleted(self, id).await
    }
    async fn volume_attached(&self, id: &VolumeId) -> R<()> {
        Control::volume_attached(self, id).await
    }
    async fn volume_detached(&self, id: &VolumeId) -> R<()> {
        Control::volume_detached(self, id).await
    }
    async fn volume_modified(&self, id: &str, ok: bool) -> R<()> {
        Control::volume_modified(self, id, ok).await
    }
    async fn snapshot_done(&self, id: &SnapshotId, ok: bool) -> R<()> {
        Control::snapshot_done(self, id, ok).await
    }
    async fn image_snapshot_done(&self, id: &SnapshotId, file: Option<&Path>) -> R<()> {
        Control::image_snapshot_done(self, id, file).await
    }
    fn console_file(&self, instance_id: &str) -> PathBuf {
        Control::console_file(self, instance_id)
    }
    fn volumes_dir(&self) -> PathBuf {
        Control::volumes_dir(self)
    }
    fn snapshots_dir(&self) -> PathBuf {
        Control::snapshots_dir(self)
    }
    fn heartbeat_interval(&self) -> std::time::Duration {
        Control::heartbeat_interval(self)
    }
    async fn changed(&self, at_most: std::time::Duration) {
        tokio::select! {
            _ = tokio::time::sleep(at_most) => {}
            _ = self.agent_wake.notified() => {}
        }
    }
}
