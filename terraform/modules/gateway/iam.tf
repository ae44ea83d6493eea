data "aws_iam_policy_document" "assume_ecs_tasks" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
  }
}

data "aws_partition" "current" {}
data "aws_caller_identity" "current" {}

locals {
  cluster_arns = [
    for c in var.discovered_clusters :
    "arn:${data.aws_partition.current.partition}:ecs:${data.aws_region.current.name}:${data.aws_caller_identity.current.account_id}:cluster/${c}"
  ]
}

# The task role: exactly the read-only calls discovery makes (gateway/tests/iam.rs checks
# this list against the code). Calls that take a cluster are limited to the discovered
# clusters; DescribeTaskDefinition and ec2:DescribeInstances support no resource scoping.
data "aws_iam_policy_document" "discovery" {
  statement {
    sid       = "ListTasksInDiscoveredClusters"
    actions   = ["ecs:ListTasks"]
    resources = ["*"]
    condition {
      test     = "ArnEquals"
      variable = "ecs:cluster"
      values   = local.cluster_arns
    }
  }
  statement {
    sid     = "DescribeInDiscoveredClusters"
    actions = ["ecs:DescribeTasks", "ecs:DescribeContainerInstances"]
    resources = flatten([
      for c in var.discovered_clusters : [
        "arn:${data.aws_partition.current.partition}:ecs:${data.aws_region.current.name}:${data.aws_caller_identity.current.account_id}:task/${c}/*",
        "arn:${data.aws_partition.current.partition}:ecs:${data.aws_region.current.name}:${data.aws_caller_identity.current.account_id}:container-instance/${c}/*",
      ]
    ])
  }
  # Service membership for mesh identities: a task is in a service when ECS lists it
  # there, and a standalone task may not take a service's name (docs/security.md).
  statement {
    sid     = "DescribeServicesInDiscoveredClusters"
    actions = ["ecs:DescribeServices"]
    resources = [
      for c in var.discovered_clusters :
      "arn:${data.aws_partition.current.partition}:ecs:${data.aws_region.current.name}:${data.aws_caller_identity.current.account_id}:service/${c}/*"
    ]
  }
  statement {
    sid       = "UnscopableReads"
    actions   = ["ecs:DescribeTaskDefinition", "ecs:ListClusters", "ec2:DescribeInstances"]
    resources = ["*"]
  }
}

resource "aws_iam_role" "task" {
  name               = "${var.name}-task"
  assume_role_policy = data.aws_iam_policy_document.assume_ecs_tasks.json
  tags               = local.tags
}

resource "aws_iam_role_policy" "discovery" {
  name   = "discovery"
  role   = aws_iam_role.task.id
  policy = data.aws_iam_policy_document.discovery.json
}

# The execution role: pull the image, write logs, read the secrets (CA certificate and
# key; the token and the trust bundle when given).
data "aws_iam_policy_document" "execution" {
  statement {
    sid       = "Secrets"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = compact([var.ca_cert_secret_arn, var.ca_key_secret_arn, var.token_secret_arn, var.trust_bundle_secret_arn])
  }
  statement {
    sid       = "DecryptSecrets"
    actions   = ["kms:Decrypt"]
    resources = [var.kms_key_arn]
  }
}

resource "aws_iam_role" "execution" {
  name               = "${var.name}-execution"
  assume_role_policy = data.aws_iam_policy_document.assume_ecs_tasks.json
  tags               = local.tags
}

resource "aws_iam_role_policy_attachment" "execution" {
  role       = aws_iam_role.execution.name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"
}

resource "aws_iam_role_policy" "execution_secrets" {
  name   = "secrets"
  role   = aws_iam_role.execution.id
  policy = data.aws_iam_policy_document.execution.json
}
