-- VPCs spanning hosts: each VPC has its own VXLAN network identifier (VNI), never shared by
-- two VPCs, and each host may have an underlay address, the local end of its VXLAN tunnels
-- (a host without one reaches no other host's instances).
ALTER TABLE vpcs ADD COLUMN vni INTEGER;
UPDATE vpcs SET vni = (SELECT COUNT(*) FROM vpcs v2 WHERE v2.id <= vpcs.id);
CREATE UNIQUE INDEX vpcs_vni ON vpcs(vni);
ALTER TABLE hosts ADD COLUMN underlay TEXT;
