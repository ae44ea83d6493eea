locals {
  tags = merge({ "app" = "berth", "component" = "gateway" }, var.tags)
  environment = merge({
    BERTH_ECS_CLUSTER        = join(",", var.discovered_clusters)
    BERTH_ECS_REFRESH        = var.ecs_refresh
    BERTH_MESH_TRUST_DOMAIN  = var.trust_domain
    BERTH_MESH_LISTEN        = "0.0.0.0:${var.control_port}"
    BERTH_MESH_PEERS_SERVICE = var.name
    BERTH_LOG_FORMAT         = "json"
  }, var.mesh_auth == null ? {} : { BERTH_MESH_AUTH = var.mesh_auth }, var.extra_environment)
  secrets = concat(
    [
      { name = "BERTH_MESH_CA_CERT", valueFrom = var.ca_cert_secret_arn },
      { name = "BERTH_MESH_CA_KEY", valueFrom = var.ca_key_secret_arn },
    ],
    var.token_secret_arn == null ? [] : [{ name = "BERTH_MESH_TOKEN", valueFrom = var.token_secret_arn }],
    var.trust_bundle_secret_arn == null ? [] : [{ name = "BERTH_MESH_TRUST_BUNDLE", valueFrom = var.trust_bundle_secret_arn }],
  )
}

data "aws_region" "current" {}

resource "aws_cloudwatch_log_group" "gateway" {
  name              = "/ecs/${var.name}"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
  tags              = local.tags
}

resource "aws_ecs_task_definition" "gateway" {
  family                   = var.name
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = var.cpu
  memory                   = var.memory
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task.arn
  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = "X86_64"
  }
  container_definitions = jsonencode([{
    name                   = "berth-gateway"
    image                  = var.image
    essential              = true
    readonlyRootFilesystem = true
    user                   = "65532:65532"
    # A non-root process may not bind a port below 1024 (the web entrypoint's :80) unless
    # the task lowers this: ECS supports it for awsvpc tasks, Fargate included.
    systemControls = var.web_port < 1024 ? [
      { namespace = "net.ipv4.ip_unprivileged_port_start", value = tostring(var.web_port) },
    ] : []
    command = [
      "--entrypoint", "web=0.0.0.0:${var.web_port}",
      "--ping", "web",
      "--admin", "127.0.0.1:9900",
    ]
    portMappings = [
      { containerPort = var.web_port, protocol = "tcp" },
      { containerPort = var.control_port, protocol = "tcp" },
    ]
    environment = [for k in sort(keys(local.environment)) : { name = k, value = local.environment[k] }]
    secrets     = local.secrets
    # Shorter than the target groups' deregistration delay, so a stopping replica keeps
    # accepting until the load balancer has stopped sending (--shutdown-delay 10s).
    stopTimeout = 60
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = aws_cloudwatch_log_group.gateway.name
        awslogs-region        = data.aws_region.current.name
        awslogs-stream-prefix = "gateway"
      }
    }
  }])
  tags = local.tags
}

resource "aws_security_group" "gateway" {
  name        = "${var.name}-tasks"
  description = "Berth gateway tasks: web entrypoint from clients, control API from sidecars"
  vpc_id      = var.vpc_id
  tags        = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "web" {
  for_each          = toset(var.ingress_cidrs)
  security_group_id = aws_security_group.gateway.id
  description       = "web entrypoint"
  ip_protocol       = "tcp"
  from_port         = var.web_port
  to_port           = var.web_port
  cidr_ipv4         = each.value
}

resource "aws_vpc_security_group_ingress_rule" "control" {
  for_each          = toset(var.mesh_cidrs)
  security_group_id = aws_security_group.gateway.id
  description       = "mesh control API from sidecars (client addresses preserved)"
  ip_protocol       = "tcp"
  from_port         = var.control_port
  to_port           = var.control_port
  cidr_ipv4         = each.value
}

resource "aws_vpc_security_group_egress_rule" "tasks" {
  for_each          = toset(var.mesh_cidrs)
  security_group_id = aws_security_group.gateway.id
  description       = "to the tasks it routes to (sidecars and apps)"
  ip_protocol       = "tcp"
  from_port         = 1
  to_port           = 65535
  cidr_ipv4         = each.value
}

resource "aws_vpc_security_group_egress_rule" "aws_apis" {
  security_group_id = aws_security_group.gateway.id
  description       = "HTTPS to the ECS, EC2 and Secrets Manager APIs"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_ecs_service" "gateway" {
  name                               = var.name
  cluster                            = var.cluster_arn
  task_definition                    = aws_ecs_task_definition.gateway.arn
  desired_count                      = var.desired_count
  launch_type                        = "FARGATE"
  platform_version                   = "LATEST"
  deployment_minimum_healthy_percent = 100
  deployment_maximum_percent         = 200
  health_check_grace_period_seconds  = 30
  propagate_tags                     = "SERVICE"
  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }
  network_configuration {
    subnets          = var.subnet_ids
    security_groups  = [aws_security_group.gateway.id]
    assign_public_ip = false
  }
  load_balancer {
    target_group_arn = var.load_balancer_type == "network" ? aws_lb_target_group.web_tcp[0].arn : aws_lb_target_group.web_http[0].arn
    container_name   = "berth-gateway"
    container_port   = var.web_port
  }
  load_balancer {
    target_group_arn = aws_lb_target_group.control.arn
    container_name   = "berth-gateway"
    container_port   = var.control_port
  }
  lifecycle {
    ignore_changes = [desired_count] # autoscaling owns it
  }
  tags = local.tags
}

resource "aws_appautoscaling_target" "gateway" {
  service_namespace  = "ecs"
  resource_id        = "service/${element(split("/", var.cluster_arn), 1)}/${aws_ecs_service.gateway.name}"
  scalable_dimension = "ecs:service:DesiredCount"
  min_capacity       = var.min_count
  max_capacity       = var.max_count
}

resource "aws_appautoscaling_policy" "cpu" {
  name               = "${var.name}-cpu"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = aws_appautoscaling_target.gateway.service_namespace
  resource_id        = aws_appautoscaling_target.gateway.resource_id
  scalable_dimension = aws_appautoscaling_target.gateway.scalable_dimension
  target_tracking_scaling_policy_configuration {
    target_value       = 60
    scale_in_cooldown  = 120
    scale_out_cooldown = 30
    predefined_metric_specification {
      predefined_metric_type = "ECSServiceAverageCPUUtilization"
    }
  }
}
