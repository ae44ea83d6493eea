output "container_definition" {
  description = "The sidecar's container definition: add it to the task definition's container_definitions (jsonencode the list)."
  value       = local.container
}

output "depends_on" {
  description = "The app container's dependsOn entry: it starts once the sidecar is HEALTHY and stops before it."
  value       = [{ containerName = "berth-sidecar", condition = "HEALTHY" }]
}

output "environment" {
  description = "For an app calling other services through the sidecar: HTTP_PROXY to its outbound listener."
  value       = [{ name = "HTTP_PROXY", value = "http://127.0.0.1:15001" }, { name = "NO_PROXY", value = "169.254.169.254,169.254.170.2" }]
}

output "execution_role_policy_json" {
  description = "A policy for the task's execution role: read the secrets the sidecar gets (the CA certificate, and the token when given)."
  value = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Sid      = "BerthSidecarSecrets"
      Effect   = "Allow"
      Action   = ["secretsmanager:GetSecretValue"]
      Resource = compact([var.ca_cert_secret_arn, var.token_secret_arn])
    }]
  })
}
