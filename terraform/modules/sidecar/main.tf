# Nothing to create: this module computes the container definition to add to any task
# definition, and what the app container needs to depend on it.
locals {
  environment = merge(
    { BERTH_GATEWAY = var.gateway_url },
    var.app_port == null ? {} : { BERTH_APP_PORT = tostring(var.app_port) },
    var.health_path == null ? {} : { BERTH_HEALTH_PATH = var.health_path },
    var.extra_environment,
  )
  # The fixed part (name, user, port, health check, ...) is the container definition
  # releases publish and `berth-sidecar inject` adds, so the two never drift.
  published = jsondecode(file("${path.module}/container-definition.json"))
  container = merge(local.published, {
    image             = var.image
    cpu               = var.cpu
    memoryReservation = var.memory
    environment       = [for k in sort(keys(local.environment)) : { name = k, value = local.environment[k] }]
    secrets = concat(
      [{ name = "BERTH_CA_CERT", valueFrom = var.ca_cert_secret_arn }],
      var.token_secret_arn == null ? [] : [{ name = "BERTH_TOKEN", valueFrom = var.token_secret_arn }],
    )
    stopTimeout = var.stop_timeout
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = var.log_group_name
        awslogs-region        = var.region
        awslogs-stream-prefix = "berth-sidecar"
      }
    }
  })
}
