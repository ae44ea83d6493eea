# The web entrypoint: a network load balancer passing TCP through (the gateway terminates
# TLS itself, by SNI), or an application load balancer terminating HTTPS.
resource "aws_lb" "web" {
  name                             = "${var.name}-web"
  load_balancer_type               = var.load_balancer_type
  internal                         = var.internal
  subnets                          = var.lb_subnet_ids
  security_groups                  = var.load_balancer_type == "application" ? [aws_security_group.alb[0].id] : null
  enable_deletion_protection       = var.deletion_protection
  enable_cross_zone_load_balancing = true
  drop_invalid_header_fields       = var.load_balancer_type == "application" ? true : null
  tags                             = local.tags
  #checkov:skip=CKV_AWS_91: access logs need a bucket of the user's; the gateway logs every request itself (JSON, CloudWatch)
  #checkov:skip=CKV2_AWS_28: a WAF web ACL is the user's choice; associate one with aws_wafv2_web_acl_association
  #checkov:skip=CKV2_AWS_20: the NLB passes TCP through (TLS ends at the gateway); the ALB listener below is HTTPS only
}

resource "aws_security_group" "alb" {
  count       = var.load_balancer_type == "application" ? 1 : 0
  name        = "${var.name}-alb"
  description = "Berth gateway application load balancer"
  vpc_id      = var.vpc_id
  tags        = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "alb_https" {
  for_each          = var.load_balancer_type == "application" ? toset(var.ingress_cidrs) : toset([])
  security_group_id = aws_security_group.alb[0].id
  description       = "HTTPS from clients"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = each.value
}

resource "aws_vpc_security_group_egress_rule" "alb_to_tasks" {
  for_each          = var.load_balancer_type == "application" ? toset(var.mesh_cidrs) : toset([])
  security_group_id = aws_security_group.alb[0].id
  description       = "to the gateway tasks"
  ip_protocol       = "tcp"
  from_port         = var.web_port
  to_port           = var.web_port
  cidr_ipv4         = each.value
}

resource "aws_lb_target_group" "web_tcp" {
  count                = var.load_balancer_type == "network" ? 1 : 0
  name                 = "${var.name}-web"
  port                 = var.web_port
  protocol             = "TCP"
  target_type          = "ip"
  vpc_id               = var.vpc_id
  deregistration_delay = 30
  preserve_client_ip   = "true"
  health_check {
    protocol            = "HTTP"
    path                = "/ping"
    interval            = 10
    healthy_threshold   = 2
    unhealthy_threshold = 2
  }
  tags = local.tags
}

resource "aws_lb_target_group" "web_http" {
  count                = var.load_balancer_type == "application" ? 1 : 0
  name                 = "${var.name}-web"
  port                 = var.web_port
  protocol             = "HTTP"
  target_type          = "ip"
  vpc_id               = var.vpc_id
  deregistration_delay = 30
  health_check {
    path                = "/ping"
    interval            = 10
    healthy_threshold   = 2
    unhealthy_threshold = 2
  }
  tags = local.tags
}

resource "aws_lb_listener" "web_tcp" {
  count             = var.load_balancer_type == "network" ? 1 : 0
  load_balancer_arn = aws_lb.web.arn
  port              = var.web_port
  protocol          = "TCP"
  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.web_tcp[0].arn
  }
  tags = local.tags
}

resource "aws_lb_listener" "web_https" {
  count             = var.load_balancer_type == "application" ? 1 : 0
  load_balancer_arn = aws_lb.web.arn
  port              = 443
  protocol          = "HTTPS"
  ssl_policy        = "ELBSecurityPolicy-TLS13-1-2-2021-06"
  certificate_arn   = var.certificate_arn
  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.web_http[0].arn
  }
  tags = local.tags
}

# The control API: an internal network load balancer passing TLS through, with client
# addresses preserved (the gateway checks that a task's requests come from its address).
# Sidecars use it to bootstrap; they then reach every replica directly.
resource "aws_lb" "control" {
  name                             = "${var.name}-ctl"
  load_balancer_type               = "network"
  internal                         = true
  subnets                          = var.subnet_ids
  enable_deletion_protection       = var.deletion_protection
  enable_cross_zone_load_balancing = true
  tags                             = local.tags
  #checkov:skip=CKV_AWS_91: access logs need a bucket of the user's; the control API logs every issuance and refusal
}

resource "aws_lb_target_group" "control" {
  name                 = "${var.name}-ctl"
  port                 = var.control_port
  protocol             = "TCP"
  target_type          = "ip"
  vpc_id               = var.vpc_id
  deregistration_delay = 30
  preserve_client_ip   = "true"
  health_check {
    protocol            = "TCP"
    interval            = 10
    healthy_threshold   = 2
    unhealthy_threshold = 2
  }
  tags = local.tags
}

resource "aws_lb_listener" "control" {
  load_balancer_arn = aws_lb.control.arn
  port              = var.control_port
  protocol          = "TCP"
  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.control.arn
  }
  tags = local.tags
}
