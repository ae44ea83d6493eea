# whoami behind its sidecar, routed by labels: the gateway finds it through the ECS API,
# reaches it over mTLS through the sidecar, and other services call it as http://whoami/.
data "aws_region" "current" {}

resource "aws_cloudwatch_log_group" "whoami" {
  name              = "/ecs/whoami"
  retention_in_days = 365
  kms_key_id        = var.kms_key_arn
}

module "sidecar" {
  source             = "../../modules/sidecar"
  image              = var.sidecar_image
  gateway_url        = var.gateway_url
  ca_cert_secret_arn = var.ca_cert_secret_arn
  token_secret_arn   = var.token_secret_arn
  app_port           = 80
  health_path        = "/health"
  log_group_name     = aws_cloudwatch_log_group.whoami.name
  region             = data.aws_region.current.name
}

data "aws_iam_policy_document" "assume_ecs_tasks" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "execution" {
  name               = "whoami-execution"
  assume_role_policy = data.aws_iam_policy_document.assume_ecs_tasks.json
}

resource "aws_iam_role_policy_attachment" "execution" {
  role       = aws_iam_role.execution.name
  policy_arn = "arn:aws:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"
}

resource "aws_iam_role_policy" "sidecar_secrets" {
  name   = "berth-sidecar-secrets"
  role   = aws_iam_role.execution.id
  policy = module.sidecar.execution_role_policy_json
}

resource "aws_iam_role" "task" {
  name               = "whoami-task"
  assume_role_policy = data.aws_iam_policy_document.assume_ecs_tasks.json
}

resource "aws_ecs_task_definition" "whoami" {
  family                   = "whoami"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = 256
  memory                   = 512
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task.arn
  container_definitions = jsonencode([
    module.sidecar.container_definition,
    {
      name                   = "whoami"
      image                  = "traefik/whoami:v1.10"
      essential              = true
      readonlyRootFilesystem = true
      portMappings           = [{ containerPort = 80, protocol = "tcp" }]
      dependsOn              = module.sidecar.depends_on
      dockerLabels = {
        "berth.enable"                   = "true"
        "berth.http.routers.whoami.rule" = "Host(`${var.host}`)"
        "berth.mesh.allow"               = "gateway,caller"
      }
      logConfiguration = {
        logDriver = "awslogs"
        options = {
          awslogs-group         = aws_cloudwatch_log_group.whoami.name
          awslogs-region        = data.aws_region.current.name
          awslogs-stream-prefix = "whoami"
        }
      }
    },
  ])
}

resource "aws_security_group" "whoami" {
  name        = "whoami-tasks"
  description = "whoami tasks: the sidecar's inbound mTLS listener only"
  vpc_id      = var.vpc_id
}

resource "aws_vpc_security_group_ingress_rule" "from_gateway" {
  security_group_id            = aws_security_group.whoami.id
  description                  = "sidecar inbound (mTLS) from the gateway"
  ip_protocol                  = "tcp"
  from_port                    = 15443
  to_port                      = 15443
  referenced_security_group_id = var.gateway_security_group_id
}

resource "aws_vpc_security_group_ingress_rule" "from_mesh" {
  security_group_id            = aws_security_group.whoami.id
  description                  = "sidecar inbound (mTLS) from other tasks of the mesh"
  ip_protocol                  = "tcp"
  from_port                    = 15443
  to_port                      = 15443
  referenced_security_group_id = aws_security_group.whoami.id
}

resource "aws_vpc_security_group_egress_rule" "https" {
  security_group_id = aws_security_group.whoami.id
  description       = "the control API and peer sidecars (TLS), AWS APIs"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 15443
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_ecs_service" "whoami" {
  name             = "whoami"
  cluster          = var.cluster_arn
  task_definition  = aws_ecs_task_definition.whoami.arn
  desired_count    = 3
  launch_type      = "FARGATE"
  platform_version = "LATEST"
  network_configuration {
    subnets          = var.subnet_ids
    security_groups  = [aws_security_group.whoami.id]
    assign_public_ip = false
  }
  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }
}
