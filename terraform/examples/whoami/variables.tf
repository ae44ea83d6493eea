variable "cluster_arn" {
  description = "ECS cluster to run the service in (one the gateway discovers)."
  type        = string
}

variable "vpc_id" {
  description = "VPC of the tasks."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets of the tasks."
  type        = list(string)
}

variable "gateway_url" {
  description = "The gateway module's control_url."
  type        = string
}

variable "gateway_security_group_id" {
  description = "The gateway module's security_group_id: allowed to reach the sidecars."
  type        = string
}

variable "ca_cert_secret_arn" {
  description = "Secret holding the mesh CA certificate (PEM)."
  type        = string
}

variable "token_secret_arn" {
  description = "Secret holding a bootstrap token; null: IAM identity (the task role), no token."
  type        = string
  default     = null
}

variable "kms_key_arn" {
  description = "KMS key of the secrets and the log group."
  type        = string
}

variable "sidecar_image" {
  description = "The berth-sidecar image."
  type        = string
}

variable "host" {
  description = "Host name the gateway routes to whoami."
  type        = string
  default     = "whoami.example.com"
}
