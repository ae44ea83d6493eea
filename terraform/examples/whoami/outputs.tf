output "service_name" {
  description = "The whoami ECS service (its mesh name too)."
  value       = aws_ecs_service.whoami.name
}

output "task_definition_arn" {
  description = "The task definition with the sidecar."
  value       = aws_ecs_task_definition.whoami.arn
}
