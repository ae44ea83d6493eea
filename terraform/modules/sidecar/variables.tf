variable "image" {
  description = "The berth-sidecar container image (see Dockerfile.sidecar)."
  type        = string
}

variable "gateway_url" {
  description = "The gateway's control API (the gateway module's control_url, or comma-separated https://HOST:PORT)."
  type        = string
  validation {
    condition     = alltrue([for g in split(",", var.gateway_url) : can(regex("^https://[^/:]+:[0-9]+/?$", trimspace(g)))])
    error_message = "gateway_url: https://HOST:PORT, several separated by commas."
  }
}

variable "ca_cert_secret_arn" {
  description = "Secrets Manager secret holding the mesh trust anchor (the CA certificate, PEM). Only the certificate: sidecars never see the key."
  type        = string
}

variable "token_secret_arn" {
  description = "Secrets Manager secret holding the bootstrap token. Null (the default): the sidecar proves its task with the task role (IAM identity); the task definition needs a task role."
  type        = string
  default     = null
}

variable "app_port" {
  description = "The app container's port (BERTH_APP_PORT); null when the app maps exactly one port."
  type        = number
  default     = null
}

variable "health_path" {
  description = "Path the sidecar probes on the app every second (BERTH_HEALTH_PATH); null to rely on the app's container health check."
  type        = string
  default     = null
}

variable "log_group_name" {
  description = "CloudWatch log group for the sidecar's logs."
  type        = string
}

variable "region" {
  description = "Region of the log group."
  type        = string
}

variable "cpu" {
  description = "CPU units reserved for the sidecar."
  type        = number
  default     = 64
}

variable "memory" {
  description = "Memory (MiB) reserved for the sidecar; it needs about 10 MiB idle, 25 MiB under load."
  type        = number
  default     = 64
}

variable "stop_timeout" {
  description = "Seconds ECS waits after SIGTERM before SIGKILL (the sidecar leaves once the app has exited)."
  type        = number
  default     = 30
  validation {
    condition     = var.stop_timeout >= 2 && var.stop_timeout <= 120
    error_message = "stop_timeout: 2 to 120 seconds (ECS's limits)."
  }
}

variable "extra_environment" {
  description = "More environment variables (OTEL_*, RUST_LOG)."
  type        = map(string)
  default     = {}
}
