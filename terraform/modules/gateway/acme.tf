# The ACME store every replica shares (docs/tls.md#certificates-by-acme): certificates,
# accounts, order locks and pending challenges, keyed by `pk` and `sk`. Challenges
# expire through DynamoDB's TTL on `expires`. The private keys of the certificates are in
# it: encrypted with the module's KMS key, readable only by the gateway's task role here.
resource "aws_dynamodb_table" "acme" {
  count        = var.acme_table ? 1 : 0
  name         = "${var.name}-acme"
  billing_mode = "PAY_PER_REQUEST"
  hash_key     = "pk"
  range_key    = "sk"
  attribute {
    name = "pk"
    type = "S"
  }
  attribute {
    name = "sk"
    type = "S"
  }
  ttl {
    attribute_name = "expires"
    enabled        = true
  }
  point_in_time_recovery {
    enabled = true
  }
  server_side_encryption {
    enabled     = true
    kms_key_arn = var.kms_key_arn
  }
  deletion_protection_enabled = var.deletion_protection
  tags                        = local.tags
}

# Exactly the calls gateway/src/acme/table.rs makes.
data "aws_iam_policy_document" "acme" {
  count = var.acme_table ? 1 : 0
  statement {
    sid       = "SharedAcmeStore"
    actions   = ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem", "dynamodb:Query"]
    resources = [aws_dynamodb_table.acme[0].arn]
  }
  # The table is encrypted with the module's key: DynamoDB uses it on the caller's behalf.
  statement {
    sid       = "TableKeyThroughDynamoDB"
    actions   = ["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey*", "kms:ReEncrypt*", "kms:DescribeKey"]
    resources = [var.kms_key_arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["dynamodb.${data.aws_region.current.name}.amazonaws.com"]
    }
  }
}

resource "aws_iam_role_policy" "acme" {
  count  = var.acme_table ? 1 : 0
  name   = "acme"
  role   = aws_iam_role.task.id
  policy = data.aws_iam_policy_document.acme[0].json
}

# DNS-01 with Route 53 (dnsChallenge.provider route53): the TXT records in the given
# zones, and the two calls that find a zone and wait for a change.
data "aws_iam_policy_document" "acme_dns" {
  count = length(var.acme_dns_zone_ids) > 0 ? 1 : 0
  statement {
    sid       = "ChallengeRecordsInTheseZones"
    actions   = ["route53:ChangeResourceRecordSets"]
    resources = [for z in var.acme_dns_zone_ids : "arn:${data.aws_partition.current.partition}:route53:::hostedzone/${z}"]
    condition {
      test     = "ForAllValues:StringEquals"
      variable = "route53:ChangeResourceRecordSetsRecordTypes"
      values   = ["TXT"]
    }
    # Only the challenge records, never the zone's other TXT records (SPF, DMARC).
    condition {
      test     = "ForAllValues:StringLike"
      variable = "route53:ChangeResourceRecordSetsNormalizedRecordNames"
      values   = ["_acme-challenge.*"]
    }
  }
  statement {
    sid       = "FindZonesAndWaitForChanges"
    actions   = ["route53:ListHostedZonesByName", "route53:GetChange"]
    resources = ["*"]
  }
}

resource "aws_iam_role_policy" "acme_dns" {
  count  = length(var.acme_dns_zone_ids) > 0 ? 1 : 0
  name   = "acme-dns"
  role   = aws_iam_role.task.id
  policy = data.aws_iam_policy_document.acme_dns[0].json
}
