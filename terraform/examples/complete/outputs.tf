output "web_dns_name" {
  description = "Send `Host: whoami.example.com` here."
  value       = module.gateway.web_dns_name
}

output "cluster_name" {
  description = "The ECS cluster."
  value       = aws_ecs_cluster.main.name
}
