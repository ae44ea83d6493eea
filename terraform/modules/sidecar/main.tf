# Nothing to create: this module computes the container definition to add to any task
# definition, and what the app container needs to depend on it.
locals {
  environment = merge(
    { BERTH_GATEWAY = var.gateway_url },
    var.app_port == null ? {} : { BERTH_APP_PORT = tostring(var.app_port) },
    var.health_path == null ? {} : { BERTH_HEALTH_PATH = var.health_path },
    var.extra_environment,
  )
  container = {
    name                   = "berth-sidecar"
    image                  = var.image
    essential              = true
    readonlyRootFilesystem = true
    user                   = "65532:65532"
    cpu                    = var.cpu
    memoryReservation      = var.memory
    portMappings           = [{ containerPort = 15443, protocol = "tcp" }]
    environment            = [for k in sort(keys(local.environment)) : { name = k, value = local.environment[k] }]
    secrets = concat(
      [{ name = "BERTH_CA_CERT", valueFrom = var.ca_cert_secret_arn }],
      var.token_secret_arn == null ? [] : [{ name = "BERTH_TOKEN", valueFrom = var.token_secret_arn }],
    )
    # `berth-sidecar health` asks the sidecar's own /readyz (no shell in the image).
    healthCheck = {
      command     = ["CMD", "/berth-sidecar", "health"]
      interval    = 5
      timeout     = 2
      retries     = 3
      startPeriod = 5
    }
    stopTimeout = var.stop_timeout
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = var.log_group_name
        awslogs-region        = var.region
        awslogs-stream-prefix = "berth-sidecar"
      }
    }
  }
}
