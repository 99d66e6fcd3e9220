terraform {
  required_providers {
    aws = { source = "hashicorp/aws", version = "5.100.0" }
  }
}
# Strato's own test of the AWS provider, unmodified: a VPC with a public subnet, a gateway,
# a security group, a key pair, an instance, a volume attached to it, an elastic IP, and a
# launch template with a second instance launched from it.
variable "endpoint" {}
variable "ami" {}
variable "access_key" {}
variable "secret_key" {}
provider "aws" {
  region                      = "local-1"
  access_key                  = var.access_key
  secret_key                  = var.secret_key
  # Credentials are validated and the account id found through STS, on Strato's endpoint.
  skip_metadata_api_check     = true
  skip_region_validation      = true
  endpoints {
    ec2 = var.endpoint
    sts = var.endpoint
  }
}
resource "aws_vpc" "main" {
  cidr_block = "10.20.0.0/16"
  enable_dns_hostnames = true
  tags = { Name = "tf" }
}
resource "aws_subnet" "a" {
  vpc_id            = aws_vpc.main.id
  cidr_block        = "10.20.1.0/24"
  availability_zone = "local-1a"
  map_public_ip_on_launch = true
}
resource "aws_internet_gateway" "gw" {
  vpc_id = aws_vpc.main.id
}
resource "aws_security_group" "web" {
  name   = "web"
  vpc_id = aws_vpc.main.id
  ingress {
    from_port   = 22
    to_port     = 22
    protocol    = "tcp"
    cidr_blocks = ["127.0.0.0/8"]
  }
  egress {
    from_port   = 0
    to_port     = 0
    protocol    = "-1"
    cidr_blocks = ["0.0.0.0/0"]
  }
}
resource "aws_key_pair" "k" {
  key_name   = "tf"
  public_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPZmEmRiSzCfW+l8N1OVc/2sQsY+8gWGv5hOKLQlGshZ libcloud-test"
}
resource "aws_instance" "web" {
  ami                    = var.ami
  instance_type          = "t3.micro"
  disable_api_stop       = true
  credit_specification {
    cpu_credits = "standard"
  }
  subnet_id              = aws_subnet.a.id
  vpc_security_group_ids = [aws_security_group.web.id]
  key_name               = aws_key_pair.k.key_name
  tags = { Name = "web" }
}
resource "aws_ebs_volume" "v" {
  availability_zone = "local-1a"
  size              = 1
}
resource "aws_volume_attachment" "va" {
  device_name = "/dev/sdf"
  volume_id   = aws_ebs_volume.v.id
  instance_id = aws_instance.web.id
}
resource "aws_eip" "ip" {
  domain   = "vpc"
  instance = aws_instance.web.id
  depends_on = [aws_internet_gateway.gw]
}

output "instance_id" {
  value = aws_instance.web.id
}
output "public_dns" {
  value = aws_eip.ip.public_dns
}
resource "aws_launch_template" "lt" {
  name_prefix            = "web-"
  image_id               = var.ami
  instance_type          = "t3.nano"
  vpc_security_group_ids = [aws_security_group.web.id]
  credit_specification {
    cpu_credits = "unlimited"
  }
  tags = { team = "blue" }
}
resource "aws_instance" "from_template" {
  subnet_id = aws_subnet.a.id
  launch_template {
    id      = aws_launch_template.lt.id
    version = aws_launch_template.lt.latest_version
  }
}
output "template_id" {
  value = aws_launch_template.lt.id
}
output "template_instance_id" {
  value = aws_instance.from_template.id
}
