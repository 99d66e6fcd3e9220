//! The network API through the AWS CLI with the simulated agent (no VMs): internet
//! gateways, route tables, network ACLs, network interfaces, elastic IPs, VPC and subnet
//! attributes, and the errors EC2 gives. What packets do is tested in network.rs.

mod common;

use std::time::{Duration, Instant};

use common::Cloud;
use serde_json::Value;

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

fn ami(cloud: &Cloud) -> String {
    let d =
        cloud.aws(&["ec2", "describe-images", "--owners", "strato", "--filters", "Name=name,Values=strato-minimal-*"]);
    s(&d["Images"][0]["ImageId"])
}

fn instance(cloud: &Cloud, id: &str) -> Value {
    cloud.aws(&["ec2", "describe-instances", "--instance-ids", id])["Reservations"][0]["Instances"][0].clone()
}

fn wait_running(cloud: &Cloud, id: &str) -> Value {
    let start = Instant::now();
    loop {
        let i = instance(cloud, id);
        if s(&i["State"]["Name"]) == "running" {
            return i;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{id} never ran");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn default_vpc(cloud: &Cloud) -> String {
    s(&cloud.aws(&["ec2", "describe-vpcs", "--filters", "Name=is-default,Values=true"])["Vpcs"][0]["VpcId"])
}

#[test]
fn gateways_route_tables_acls_and_attributes() {
    let cloud = Cloud::start_simulated();
    let dvpc = default_vpc(&cloud);
    // The default VPC comes with an attached gateway and a default route to it.
    let g = cloud.aws(&[
        "ec2",
        "describe-internet-gateways",
        "--filters",
        &format!("Name=attachment.vpc-id,Values={dvpc}"),
    ]);
    let digw = s(&g["InternetGateways"][0]["InternetGatewayId"]);
    assert!(digw.starts_with("igw-"));
    assert_eq!(s(&g["InternetGateways"][0]["Attachments"][0]["State"]), "available");
    let rt = cloud.aws(&["ec2", "describe-route-tables", "--filters", &format!("Name=vpc-id,Values={dvpc}")]);
    let routes = &rt["RouteTables"][0]["Routes"];
    assert_eq!(s(&routes[0]["GatewayId"]), "local");
    assert_eq!(s(&routes[0]["DestinationCidrBlock"]), "172.31.0.0/16");
    assert_eq!(s(&routes[1]["GatewayId"]), digw);
    assert_eq!(rt["RouteTables"][0]["Associations"][0]["Main"], true);
    assert_eq!(
        cloud.aws_err(&["ec2", "delete-vpc", "--vpc-id", &dvpc]),
        "DependencyViolation",
        "a VPC with subnets and a gateway"
    );

    // A new VPC: main route table with only the local route until a gateway is attached.
    let vpc = s(&cloud.aws(&["ec2", "create-vpc", "--cidr-block", "10.0.0.0/16"])["Vpc"]["VpcId"]);
    let subnet =
        s(&cloud.aws(&["ec2", "create-subnet", "--vpc-id", &vpc, "--cidr-block", "10.0.1.0/24"])["Subnet"]["SubnetId"]);
    let rt = cloud.aws(&["ec2", "describe-route-tables", "--filters", &format!("Name=vpc-id,Values={vpc}")]);
    assert_eq!(rt["RouteTables"][0]["Routes"].as_array().unwrap().len(), 1);
    let igw = s(&cloud.aws(&["ec2", "create-internet-gateway"])["InternetGateway"]["InternetGatewayId"]);
    cloud.aws(&["ec2", "attach-internet-gateway", "--internet-gateway-id", &igw, "--vpc-id", &vpc]);
    let rt = cloud.aws(&["ec2", "describe-route-tables", "--filters", &format!("Name=route.gateway-id,Values={igw}")]);
    assert_eq!(s(&rt["RouteTables"][0]["VpcId"]), vpc);
    assert_eq!(
        cloud.aws_err(&["ec2", "attach-internet-gateway", "--internet-gateway-id", &igw, "--vpc-id", &dvpc]),
        "Resource.AlreadyAssociated"
    );
    assert_eq!(
        cloud.aws_err(&["ec2", "delete-internet-gateway", "--internet-gateway-id", &igw]),
        "DependencyViolation"
    );
    cloud.aws(&["ec2", "detach-internet-gateway", "--internet-gateway-id", &igw, "--vpc-id", &vpc]);
    assert_eq!(
        cloud.aws_err(&["ec2", "detach-internet-gateway", "--internet-gateway-id", &igw, "--vpc-id", &vpc]),
        "Gateway.NotAttached"
    );
    cloud.aws(&["ec2", "delete-internet-gateway", "--internet-gateway-id", &igw]);
    assert_eq!(
        cloud.aws_err(&["ec2", "describe-internet-gateways", "--internet-gateway-ids", &igw]),
        "InvalidInternetGatewayID.NotFound"
    );
    assert_eq!(
        cloud.aws_err(&["ec2", "describe-internet-gateways", "--internet-gateway-ids", "igw-nope"]),
        "InvalidInternetGatewayID.Malformed"
    );

    // The default ACL allows everything and covers every subnet of its VPC.
    let acl = cloud.aws(&["ec2", "describe-network-acls", "--filters", &format!("Name=vpc-id,Values={vpc}")]);
    let acl = &acl["NetworkAcls"][0];
    assert_eq!(acl["IsDefault"], true);
    assert_eq!(acl["Entries"].as_array().unwrap().len(), 4);
    assert_eq!(s(&acl["Associations"][0]["SubnetId"]), subnet);
    let by_subnet = cloud.aws(&[
        "ec2",
        "describe-network-acls",
        "--filters",
        &format!("Name=association.subnet-id,Values={subnet}"),
    ]);
    assert_eq!(s(&by_subnet["NetworkAcls"][0]["NetworkAclId"]), s(&acl["NetworkAclId"]));

    // VPC attributes.
    let a = cloud.aws(&["ec2", "describe-vpc-attribute", "--vpc-id", &vpc, "--attribute", "enableDnsHostnames"]);
    assert_eq!(a["EnableDnsHostnames"]["Value"], false);
    cloud.aws(&["ec2", "modify-vpc-attribute", "--vpc-id", &vpc, "--enable-dns-hostnames", "{\"Value\":true}"]);
    let a = cloud.aws(&["ec2", "describe-vpc-attribute", "--vpc-id", &vpc, "--attribute", "enableDnsHostnames"]);
    assert_eq!(a["EnableDnsHostnames"]["Value"], true);
    assert_eq!(
        cloud.aws_err(&["ec2", "describe-vpc-attribute", "--vpc-id", &vpc, "--attribute", "colour"]),
        "InvalidParameterValue"
    );

    // A subnet with an instance cannot go; MapPublicIpOnLaunch decides a launch's address.
    let ami = ami(&cloud);
    let r =
        cloud.aws(&["ec2", "run-instances", "--image-id", &ami, "--subnet-id", &subnet, "--instance-type", "t3.nano"]);
    let i = s(&r["Instances"][0]["InstanceId"]);
    assert!(r["Instances"][0].get("PublicIpAddress").is_none(), "a new subnet maps no public address");
    assert_eq!(cloud.aws_err(&["ec2", "delete-subnet", "--subnet-id", &subnet]), "DependencyViolation");
    cloud.aws(&["ec2", "modify-subnet-attribute", "--subnet-id", &subnet, "--map-public-ip-on-launch"]);
    let d = cloud.aws(&["ec2", "describe-subnets", "--subnet-ids", &subnet]);
    assert_eq!(d["Subnets"][0]["MapPublicIpOnLaunch"], true);
    let r =
        cloud.aws(&["ec2", "run-instances", "--image-id", &ami, "--subnet-id", &subnet, "--instance-type", "t3.nano"]);
    assert!(s(&r["Instances"][0]["PublicIpAddress"]).starts_with("127."));
    let r = cloud.aws(&[
        "ec2",
        "run-instances",
        "--image-id",
        &ami,
        "--subnet-id",
        &subnet,
        "--instance-type",
        "t3.nano",
        "--no-associate-public-ip-address",
        "--private-ip-address",
        "10.0.1.50",
    ]);
    assert!(r["Instances"][0].get("PublicIpAddress").is_none());
    assert_eq!(s(&r["Instances"][0]["PrivateIpAddress"]), "10.0.1.50");
    let err = cloud.aws_err(&[
        "ec2",
        "run-instances",
        "--image-id",
        &ami,
        "--subnet-id",
        &subnet,
        "--instance-type",
        "t3.nano",
        "--private-ip-address",
        "10.0.1.50",
    ]);
    assert_eq!(err, "InvalidIPAddress.InUse");

    // Each instance has its primary interface.
    let ni = cloud.aws(&[
        "ec2",
        "describe-network-interfaces",
        "--filters",
        &format!("Name=attachment.instance-id,Values={i}"),
    ]);
    let ni = &ni["NetworkInterfaces"][0];
    let described = wait_running(&cloud, &i);
    assert_eq!(s(&ni["NetworkInterfaceId"]), s(&described["NetworkInterfaces"][0]["NetworkInterfaceId"]));
    assert_eq!(s(&ni["PrivateIpAddress"]), s(&described["PrivateIpAddress"]));
    assert_eq!(ni["Attachment"]["DeviceIndex"], 0);
    assert_eq!(s(&ni["Status"]), "in-use");
    let by_id = cloud.aws(&[
        "ec2",
        "describe-instances",
        "--filters",
        &format!("Name=network-interface.network-interface-id,Values={}", s(&ni["NetworkInterfaceId"])),
    ]);
    assert_eq!(s(&by_id["Reservations"][0]["Instances"][0]["InstanceId"]), i);
}

#[test]
fn elastic_ips_move_between_instances() {
    let cloud = Cloud::start_simulated();
    cloud.create_account("other", false);
    let ami = ami(&cloud);
    let r = cloud.aws(&["ec2", "run-instances", "--image-id", &ami, "--instance-type", "t3.nano", "--count", "2"]);
    let a = s(&r["Instances"][0]["InstanceId"]);
    let b = s(&r["Instances"][1]["InstanceId"]);
    let pool_a = s(&wait_running(&cloud, &a)["PublicIpAddress"]);
    wait_running(&cloud, &b);

    let e = cloud.aws(&["ec2", "allocate-address", "--domain", "vpc"]);
    let (alloc, eip) = (s(&e["AllocationId"]), s(&e["PublicIp"]));
    assert!(alloc.starts_with("eipalloc-") && eip.starts_with("127."));
    assert_ne!(eip, pool_a);
    let assoc = cloud.aws(&["ec2", "associate-address", "--allocation-id", &alloc, "--instance-id", &a]);
    assert!(s(&assoc["AssociationId"]).starts_with("eipassoc-"));
    assert_eq!(s(&instance(&cloud, &a)["PublicIpAddress"]), eip, "the elastic IP replaces the pool address");
    let d = cloud.aws(&["ec2", "describe-addresses", "--allocation-ids", &alloc]);
    let addr = &d["Addresses"][0];
    assert_eq!(s(&addr["InstanceId"]), a);
    assert_eq!(s(&addr["PrivateIpAddress"]), s(&instance(&cloud, &a)["PrivateIpAddress"]));
    assert!(s(&addr["NetworkInterfaceId"]).starts_with("eni-"));
    let ni = cloud.aws(&[
        "ec2",
        "describe-network-interfaces",
        "--filters",
        &format!("Name=association.public-ip,Values={eip}"),
    ]);
    assert_eq!(s(&ni["NetworkInterfaces"][0]["Association"]["AllocationId"]), alloc);

    // In use: not released, not taken over without AllowReassociation.
    assert_eq!(cloud.aws_err(&["ec2", "release-address", "--allocation-id", &alloc]), "InvalidIPAddress.InUse");
    assert_eq!(
        cloud.aws_err(&[
            "ec2",
            "associate-address",
            "--allocation-id",
            &alloc,
            "--instance-id",
            &b,
            "--no-allow-reassociation"
        ]),
        "Resource.AlreadyAssociated"
    );
    cloud.aws(&["ec2", "associate-address", "--allocation-id", &alloc, "--instance-id", &b, "--allow-reassociation"]);
    assert_eq!(s(&instance(&cloud, &b)["PublicIpAddress"]), eip);
    let a_now = s(&instance(&cloud, &a)["PublicIpAddress"]);
    assert!(a_now.starts_with("127.") && a_now != eip, "A gets a pool address back: {a_now}");

    // Another account sees none of it and cannot use it.
    assert_eq!(
        cloud.aws_err_as("other", &["ec2", "describe-addresses", "--allocation-ids", &alloc]),
        "InvalidAllocationID.NotFound"
    );
    let theirs = cloud.aws_json_as("other", &["ec2", "describe-addresses"]);
    assert_eq!(theirs["Addresses"].as_array().unwrap().len(), 0);

    // Stop/start keeps the elastic IP; disassociating gives the instance a pool address.
    cloud.aws(&["ec2", "stop-instances", "--instance-ids", &b]);
    let start = Instant::now();
    while s(&instance(&cloud, &b)["State"]["Name"]) != "stopped" {
        assert!(start.elapsed() < Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(s(&instance(&cloud, &b)["PublicIpAddress"]), eip, "a stopped instance keeps its elastic IP");
    cloud.aws(&["ec2", "start-instances", "--instance-ids", &b]);
    assert_eq!(s(&wait_running(&cloud, &b)["PublicIpAddress"]), eip);
    cloud.aws(&["ec2", "disassociate-address", "--public-ip", &eip]);
    let b_now = s(&instance(&cloud, &b)["PublicIpAddress"]);
    assert!(b_now.starts_with("127.") && b_now != eip);
    assert_eq!(
        cloud.aws_err(&["ec2", "disassociate-address", "--association-id", "eipassoc-0123456789abcdef0"]),
        "InvalidAssociationID.NotFound"
    );
    cloud.aws(&["ec2", "release-address", "--allocation-id", &alloc]);
    assert_eq!(
        cloud.aws_err(&["ec2", "describe-addresses", "--allocation-ids", &alloc]),
        "InvalidAllocationID.NotFound"
    );
    assert_eq!(cloud.aws_err(&["ec2", "describe-addresses", "--public-ips", &eip]), "InvalidAddress.NotFound");

    // Five per account.
    for _ in 0..5 {
        cloud.aws(&["ec2", "allocate-address"]);
    }
    assert_eq!(cloud.aws_err(&["ec2", "allocate-address"]), "AddressLimitExceeded");
    // Terminating lets go of the address but keeps the allocation.
    let spare = cloud.aws(&["ec2", "describe-addresses"]);
    let spare_alloc = s(&spare["Addresses"][0]["AllocationId"]);
    cloud.aws(&["ec2", "associate-address", "--allocation-id", &spare_alloc, "--instance-id", &a]);
    cloud.aws(&["ec2", "terminate-instances", "--instance-ids", &a]);
    let start = Instant::now();
    loop {
        let d = cloud.aws(&["ec2", "describe-addresses", "--allocation-ids", &spare_alloc]);
        if d["Addresses"][0].get("InstanceId").is_none() {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "the elastic IP stayed with a terminated instance");
        std::thread::sleep(Duration::from_millis(100));
    }

    // The bill: an elastic IP costs while it is not on a running instance.
    let line = |bill: &Value, id: &str| {
        bill["lines"].as_array().unwrap().iter().find(|l| l["resource_id"] == id).cloned().unwrap_or(Value::Null)
    };
    let bill = cloud.bill("admin");
    let released = line(&bill, &alloc);
    assert_eq!(released["usage_type"], "ElasticIP:IdleAddress");
    assert_eq!(released["unit"], "Hrs");
    let idle_hours = released["quantity"].as_f64().unwrap();
    assert!(idle_hours > 0.0 && idle_hours < 0.1, "idle while unassociated and while B was stopped: {idle_hours}");
    let all = cloud.aws(&["ec2", "describe-addresses"]);
    let on_b =
        all["Addresses"].as_array().unwrap().iter().map(|a| s(&a["AllocationId"])).find(|a| *a != spare_alloc).unwrap();
    cloud.aws(&["ec2", "associate-address", "--allocation-id", &on_b, "--instance-id", &b]);
    let first = line(&cloud.bill("admin"), &on_b)["quantity"].as_f64().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let second = line(&cloud.bill("admin"), &on_b)["quantity"].as_f64().unwrap();
    assert_eq!(first, second, "an elastic IP on a running instance costs nothing");
    let spare_then = line(&cloud.bill("admin"), &spare_alloc)["quantity"].as_f64().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let spare_now = line(&cloud.bill("admin"), &spare_alloc)["quantity"].as_f64().unwrap();
    assert!(spare_now > spare_then, "an unassociated elastic IP is billed");
}
