variable "region" {
  description = "AWS region."
  type        = string
  default     = "us-east-1"
}

variable "availability_zones" {
  description = "Two availability zones of the region, for the subnets."
  type        = list(string)
  default     = ["us-east-1a", "us-east-1b"]
  validation {
    condition     = length(var.availability_zones) == 2
    error_message = "availability_zones: exactly two."
  }
}

variable "name" {
  description = "Prefix of every resource."
  type        = string
  default     = "berth"
}

variable "vpc_cidr" {
  description = "CIDR of the new VPC."
  type        = string
  default     = "10.42.0.0/16"
  validation {
    condition     = can(cidrhost(var.vpc_cidr, 0))
    error_message = "vpc_cidr: a CIDR block."
  }
}

variable "gateway_image" {
  description = "The berth-gateway image."
  type        = string
}

variable "sidecar_image" {
  description = "The berth-sidecar image."
  type        = string
}

variable "ca_cert_secret_arn" {
  description = "Secret holding the mesh CA certificate (PEM). Make one with any CA tooling; the key never leaves Secrets Manager and the gateway."
  type        = string
}

variable "ca_key_secret_arn" {
  description = "Secret holding the mesh CA key (PEM)."
  type        = string
}

variable "token_secret_arn" {
  description = "Secret holding a bootstrap token (16+ random characters); null: IAM identity (the tasks' roles), no token."
  type        = string
  default     = null
}

variable "kms_key_arn" {
  description = "KMS key of those secrets; it also encrypts the log groups."
  type        = string
}

variable "ingress_cidrs" {
  description = "Who may reach the gateway's web entrypoint."
  type        = list(string)
}
