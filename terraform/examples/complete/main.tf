# The whole shape: a VPC, an ECS cluster, the gateway (3 replicas behind an NLB) and the
# whoami service with its sidecar, routed by labels.
provider "aws" {
  region = var.region
}

locals {
  azs = var.availability_zones
}

resource "aws_vpc" "main" {
  cidr_block           = var.vpc_cidr
  enable_dns_support   = true
  enable_dns_hostnames = true
  tags                 = { Name = var.name }
}

# No rule: nothing uses the default security group.
resource "aws_default_security_group" "default" {
  vpc_id = aws_vpc.main.id
}

resource "aws_subnet" "public" {
  count             = 2
  vpc_id            = aws_vpc.main.id
  availability_zone = local.azs[count.index]
  cidr_block        = cidrsubnet(var.vpc_cidr, 8, count.index)
  tags              = { Name = "${var.name}-public-${count.index}" }
}

resource "aws_subnet" "private" {
  count             = 2
  vpc_id            = aws_vpc.main.id
  availability_zone = local.azs[count.index]
  cidr_block        = cidrsubnet(var.vpc_cidr, 8, 10 + count.index)
  tags              = { Name = "${var.name}-private-${count.index}" }
}

resource "aws_internet_gateway" "main" {
  vpc_id = aws_vpc.main.id
}

resource "aws_eip" "nat" {
  domain = "vpc"
  #checkov:skip=CKV2_AWS_19: the address belongs to the NAT gateway below
}

resource "aws_nat_gateway" "main" {
  subnet_id     = aws_subnet.public[0].id
  allocation_id = aws_eip.nat.id
}

resource "aws_route_table" "public" {
  vpc_id = aws_vpc.main.id
  route {
    cidr_block = "0.0.0.0/0"
    gateway_id = aws_internet_gateway.main.id
  }
}

resource "aws_route_table" "private" {
  vpc_id = aws_vpc.main.id
  route {
    cidr_block     = "0.0.0.0/0"
    nat_gateway_id = aws_nat_gateway.main.id
  }
}

resource "aws_route_table_association" "public" {
  count          = 2
  subnet_id      = aws_subnet.public[count.index].id
  route_table_id = aws_route_table.public.id
}

resource "aws_route_table_association" "private" {
  count          = 2
  subnet_id      = aws_subnet.private[count.index].id
  route_table_id = aws_route_table.private.id
}

# VPC flow logs to CloudWatch.
resource "aws_cloudwatch_log_group" "flow" {
  name              = "/vpc/${var.name}"
  retention_in_days = 365
  kms_key_id        = var.kms_key_arn
}

data "aws_iam_policy_document" "flow_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["vpc-flow-logs.amazonaws.com"]
    }
  }
}

data "aws_iam_policy_document" "flow" {
  statement {
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"]
    resources = ["${aws_cloudwatch_log_group.flow.arn}:*"]
  }
}

resource "aws_iam_role" "flow" {
  name               = "${var.name}-flow-logs"
  assume_role_policy = data.aws_iam_policy_document.flow_assume.json
}

resource "aws_iam_role_policy" "flow" {
  name   = "flow-logs"
  role   = aws_iam_role.flow.id
  policy = data.aws_iam_policy_document.flow.json
}

resource "aws_flow_log" "main" {
  vpc_id          = aws_vpc.main.id
  traffic_type    = "ALL"
  log_destination = aws_cloudwatch_log_group.flow.arn
  iam_role_arn    = aws_iam_role.flow.arn
}

resource "aws_ecs_cluster" "main" {
  name = var.name
  setting {
    name  = "containerInsights"
    value = "enabled"
  }
}

module "gateway" {
  source              = "../../modules/gateway"
  name                = "${var.name}-gateway"
  cluster_arn         = aws_ecs_cluster.main.arn
  discovered_clusters = [aws_ecs_cluster.main.name]
  image               = var.gateway_image
  vpc_id              = aws_vpc.main.id
  subnet_ids          = aws_subnet.private[*].id
  lb_subnet_ids       = aws_subnet.public[*].id
  ingress_cidrs       = var.ingress_cidrs
  mesh_cidrs          = [var.vpc_cidr]
  ca_cert_secret_arn  = var.ca_cert_secret_arn
  ca_key_secret_arn   = var.ca_key_secret_arn
  token_secret_arn    = var.token_secret_arn
  kms_key_arn         = var.kms_key_arn
}

module "whoami" {
  source                    = "../whoami"
  cluster_arn               = aws_ecs_cluster.main.arn
  vpc_id                    = aws_vpc.main.id
  subnet_ids                = aws_subnet.private[*].id
  gateway_url               = module.gateway.control_url
  gateway_security_group_id = module.gateway.security_group_id
  ca_cert_secret_arn        = var.ca_cert_secret_arn
  token_secret_arn          = var.token_secret_arn
  kms_key_arn               = var.kms_key_arn
  sidecar_image             = var.sidecar_image
}
