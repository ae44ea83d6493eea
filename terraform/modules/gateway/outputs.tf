output "web_dns_name" {
  description = "DNS name of the web load balancer (point your records here)."
  value       = aws_lb.web.dns_name
}

output "web_zone_id" {
  description = "Route 53 zone of the web load balancer, for alias records."
  value       = aws_lb.web.zone_id
}

output "control_url" {
  description = "The control API for sidecars' BERTH_GATEWAY (the internal NLB; sidecars then reach every replica directly)."
  value       = "https://${aws_lb.control.dns_name}:${var.control_port}"
}

output "security_group_id" {
  description = "Security group of the gateway tasks (allow it to reach your tasks' sidecars on 15443)."
  value       = aws_security_group.gateway.id
}

output "service_name" {
  description = "The gateway's ECS service (also its --mesh-peers-service)."
  value       = aws_ecs_service.gateway.name
}

output "task_role_arn" {
  description = "The gateway's task role (discovery permissions)."
  value       = aws_iam_role.task.arn
}

output "log_group_name" {
  description = "The gateway's CloudWatch log group."
  value       = aws_cloudwatch_log_group.gateway.name
}

output "acme_storage" {
  description = "With acme_table: the value of a certificate resolver's storage (TRAEFIK_CERTIFICATESRESOLVERS_<NAME>_ACME_STORAGE in extra_environment) that shares certificates between replicas."
  value       = var.acme_table ? "dynamodb://${aws_dynamodb_table.acme[0].name}" : null
}
