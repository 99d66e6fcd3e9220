-- PostgreSQL twin of ../0010_root_volumes.sql (same version): BIGINT for INTEGER, DOUBLE PRECISION for REAL,
-- BIGSERIAL for AUTOINCREMENT. Keep the two in step.

-- The root volume is an EBS volume like the others (DescribeVolumes, snapshots, ModifyVolume,
-- DeleteOnTermination; detachable while its instance is stopped): a row here, its file at
-- DATA_DIR/volumes/<id>.qcow2 (an overlay on the image's disk, made at the first launch).
-- `root` marks the volume attached at the instance's root device.

ALTER TABLE volumes ADD COLUMN root BIGINT NOT NULL DEFAULT 0;

-- Instances launched before this migration: their root volume becomes a row (its file moves
-- from DATA_DIR/instances/<id>/root.qcow2 when the agent next sees it). Its metering starts
-- at the launch, as the instance-based root interval did.
INSERT INTO volumes (id, account_id, availability_zone, size_gb, volume_type, iops, throughput, snapshot_id,
                     state, created_at, instance_id, device, attach_state, attach_time, delete_on_termination,
                     metered_since, root)
SELECT i.root_volume_id, i.account_id, i.availability_zone, i.root_size_gb, 'gp3', 3000, 125,
       (SELECT root_snapshot_id FROM images WHERE images.id = i.image_id),
       'in-use', i.launch_time, i.id, '/dev/xvda', 'attached', i.launch_time, i.delete_on_termination,
       i.launch_time, 1
FROM instances i
WHERE i.state != 'terminated' AND i.root_volume_id NOT IN (SELECT id FROM volumes);
