variable "name" {
  description = "Name of the gateway service; prefixes every resource."
  type        = string
  default     = "berth-gateway"
  validation {
    condition     = can(regex("^[a-zA-Z][a-zA-Z0-9-]{0,30}$", var.name))
    error_message = "name: letters, digits and dashes, at most 31 characters, starting with a letter."
  }
}

variable "cluster_arn" {
  description = "ARN of the ECS cluster the gateway runs in."
  type        = string
}

variable "discovered_clusters" {
  description = "Names of the ECS clusters the gateway discovers (--ecs-cluster). The task role may describe tasks in these clusters only."
  type        = list(string)
  validation {
    condition     = length(var.discovered_clusters) > 0
    error_message = "discovered_clusters: at least one cluster (there is no default cluster)."
  }
}

variable "image" {
  description = "The berth-gateway container image (see Dockerfile.gateway)."
  type        = string
}

variable "vpc_id" {
  description = "VPC of the gateway tasks and the load balancer."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets of the gateway tasks (at least two, in different availability zones)."
  type        = list(string)
  validation {
    condition     = length(var.subnet_ids) >= 2
    error_message = "subnet_ids: at least two subnets, for availability."
  }
}

variable "lb_subnet_ids" {
  description = "Subnets of the load balancer (public ones for an internet-facing gateway)."
  type        = list(string)
}

variable "internal" {
  description = "Whether the load balancer is internal (no internet-facing address)."
  type        = bool
  default     = false
}

variable "load_balancer_type" {
  description = "`network` (default: TCP, client addresses preserved) or `application` (HTTP) in front of the web entrypoint. The control API always has its own internal network load balancer."
  type        = string
  default     = "network"
  validation {
    condition     = contains(["network", "application"], var.load_balancer_type)
    error_message = "load_balancer_type: network or application."
  }
}

variable "web_port" {
  description = "Port of the web entrypoint, on the tasks and the load balancer."
  type        = number
  default     = 80
}

variable "control_port" {
  description = "Port of the mesh control API (--mesh-listen)."
  type        = number
  default     = 9443
}

variable "ingress_cidrs" {
  description = "Client networks allowed to reach the web entrypoint (give [\"0.0.0.0/0\"] explicitly for a public gateway)."
  type        = list(string)
}

variable "mesh_cidrs" {
  description = "Networks of the tasks with sidecars, allowed to reach the control API (usually the VPC's CIDR)."
  type        = list(string)
}

variable "desired_count" {
  description = "Gateway replicas to run."
  type        = number
  default     = 3
  validation {
    condition     = var.desired_count >= 1
    error_message = "desired_count: at least 1."
  }
}

variable "min_count" {
  description = "Fewest replicas autoscaling keeps."
  type        = number
  default     = 2
}

variable "max_count" {
  description = "Most replicas autoscaling runs."
  type        = number
  default     = 10
}

variable "cpu" {
  description = "Task CPU units (Fargate sizes)."
  type        = number
  default     = 512
}

variable "memory" {
  description = "Task memory in MiB (Fargate sizes)."
  type        = number
  default     = 1024
}

variable "ca_cert_secret_arn" {
  description = "Secrets Manager secret holding the mesh CA certificate (PEM, the CA first, then any chain to the root). Every replica shares it."
  type        = string
}

variable "ca_key_secret_arn" {
  description = "Secrets Manager secret holding the mesh CA private key (PEM)."
  type        = string
}

variable "token_secret_arn" {
  description = "Secrets Manager secret holding a bootstrap token sidecars may present for their first certificate (at least 16 characters). Null (the default): tasks prove themselves with their task role (IAM identity), no shared secret."
  type        = string
  default     = null
}

variable "mesh_auth" {
  description = "How a first certificate is proved (--mesh-auth): iam, token or \"iam,token\". Null: token when token_secret_arn is set, else iam."
  type        = string
  default     = null
}

variable "trust_bundle_secret_arn" {
  description = "Secrets Manager secret holding more mesh roots beside the CA's (PEM): the next CA's during a rotation (docs/security.md). Null: the CA's root only."
  type        = string
  default     = null
}

variable "kms_key_arn" {
  description = "KMS key that encrypts the log group and the three secrets (the task execution role may decrypt with it)."
  type        = string
}

variable "certificate_arn" {
  description = "ACM certificate for the HTTPS listener when load_balancer_type is `application` (an NLB passes TLS through to the gateway instead)."
  type        = string
  default     = null
}

variable "deletion_protection" {
  description = "Protect the load balancers (and the ACME table) from deletion."
  type        = bool
  default     = true
}

variable "trust_domain" {
  description = "SPIFFE trust domain of the mesh."
  type        = string
  default     = "berth.local"
}

variable "ecs_refresh" {
  description = "ECS reconcile period (--ecs-refresh)."
  type        = string
  default     = "30s"
}

variable "log_retention_days" {
  description = "Retention of the gateway's CloudWatch log group."
  type        = number
  default     = 365
}

variable "extra_environment" {
  description = "More environment variables for the gateway container (BERTH_* flags, OTEL_*)."
  type        = map(string)
  default     = {}
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}

variable "acme_table" {
  description = "Create a DynamoDB table for ACME certificates shared by every replica (set the resolver's storage to the acme_storage output) and let the task role use it."
  type        = bool
  default     = false
}

variable "acme_dns_zone_ids" {
  description = "Route 53 hosted zones in which ACME DNS-01 (dnsChallenge.provider route53) may write its TXT records; the task role gets only that."
  type        = list(string)
  default     = []
}
