//! API errors, one variant per ECS `__type` (and per ELBv2 error `Code`).

use serde::{Deserialize, Serialize};

/// The `__type` of an error response. Each maps one-to-one onto the name a
/// botocore client turns into an exception class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorKind {
    ClientException,
    InvalidParameterException,
    ClusterNotFoundException,
    ResourceNotFoundException,
    ServerException,
    SerializationException,
    UnknownOperationException,
    MissingAuthenticationTokenException,
    IncompleteSignatureException,
    InvalidSignatureException,
    UnrecognizedClientException,
    AccessDeniedException,
    ClusterContainsContainerInstancesException,
    ClusterContainsServicesException,
    ClusterContainsTasksException,
    LimitExceededException,
    ConflictException,
    ThrottlingException,
    TargetNotFoundException,
    AttributeLimitExceededException,
    ServiceNotFoundException,
    ServiceNotActiveException,
    // ELBv2 (query protocol) error codes; the variant name is the wire `Code`.
    LoadBalancerNotFound,
    TargetGroupNotFound,
    ListenerNotFound,
    RuleNotFound,
    DuplicateLoadBalancerName,
    DuplicateTargetGroupName,
    DuplicateListener,
    PriorityInUse,
    ResourceInUse,
    ValidationError,
    InvalidTarget,
    InvalidConfigurationRequest,
    OperationNotPermitted,
    TooManyRules,
    TooManyTargets,
    TargetGroupAssociationLimit,
    IncompatibleProtocols,
    UnsupportedProtocol,
    InvalidLoadBalancerAction,
    TooManyTags,
}

impl ErrorKind {
    /// The `__type` string sent on the wire.
    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorKind::ClientException => "ClientException",
            ErrorKind::InvalidParameterException => "InvalidParameterException",
            ErrorKind::ClusterNotFoundException => "ClusterNotFoundException",
            ErrorKind::ResourceNotFoundException => "ResourceNotFoundException",
            ErrorKind::ServerException => "ServerException",
            ErrorKind::SerializationException => "SerializationException",
            ErrorKind::UnknownOperationException => "UnknownOperationException",
            ErrorKind::MissingAuthenticationTokenException => "MissingAuthenticationTokenException",
            ErrorKind::IncompleteSignatureException => "IncompleteSignatureException",
            ErrorKind::InvalidSignatureException => "InvalidSignatureException",
            ErrorKind::UnrecognizedClientException => "UnrecognizedClientException",
            ErrorKind::AccessDeniedException => "AccessDeniedException",
            ErrorKind::ClusterContainsContainerInstancesException => {
                "ClusterContainsContainerInstancesException"
            }
            ErrorKind::ClusterContainsServicesException => "ClusterContainsServicesException",
            ErrorKind::ClusterContainsTasksException => "ClusterContainsTasksException",
            ErrorKind::LimitExceededException => "LimitExceededException",
            ErrorKind::ConflictException => "ConflictException",
            ErrorKind::ThrottlingException => "ThrottlingException",
            ErrorKind::TargetNotFoundException => "TargetNotFoundException",
            ErrorKind::AttributeLimitExceededException => "AttributeLimitExceededException",
            ErrorKind::ServiceNotFoundException => "ServiceNotFoundException",
            ErrorKind::ServiceNotActiveException => "ServiceNotActiveException",
            ErrorKind::LoadBalancerNotFound => "LoadBalancerNotFound",
            ErrorKind::TargetGroupNotFound => "TargetGroupNotFound",
            ErrorKind::ListenerNotFound => "ListenerNotFound",
            ErrorKind::RuleNotFound => "RuleNotFound",
            ErrorKind::DuplicateLoadBalancerName => "DuplicateLoadBalancerName",
            ErrorKind::DuplicateTargetGroupName => "DuplicateTargetGroupName",
            ErrorKind::DuplicateListener => "DuplicateListener",
            ErrorKind::PriorityInUse => "PriorityInUse",
            ErrorKind::ResourceInUse => "ResourceInUse",
            ErrorKind::ValidationError => "ValidationError",
            ErrorKind::InvalidTarget => "InvalidTarget",
            ErrorKind::InvalidConfigurationRequest => "InvalidConfigurationRequest",
            ErrorKind::OperationNotPermitted => "OperationNotPermitted",
            ErrorKind::TooManyRules => "TooManyRules",
            ErrorKind::TooManyTargets => "TooManyTargets",
            ErrorKind::TargetGroupAssociationLimit => "TargetGroupAssociationLimit",
            ErrorKind::IncompatibleProtocols => "IncompatibleProtocols",
            ErrorKind::UnsupportedProtocol => "UnsupportedProtocol",
            ErrorKind::InvalidLoadBalancerAction => "InvalidLoadBalancerAction",
            ErrorKind::TooManyTags => "TooManyTags",
        }
    }

    /// HTTP status: 500 for `ServerException` (the only `fault`), 400 for
    /// everything else, as AWS does.
    pub fn http_status(&self) -> u16 {
        match self {
            ErrorKind::ServerException => 500,
            _ => 400,
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error as returned to an API caller: `{"__type": kind, "message": message}`.
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize, Deserialize)]
#[error("{kind:?}: {message}")]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ApiError {
            kind,
            message: message.into(),
        }
    }

    /// `ClientException`.
    pub fn client(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::ClientException, message)
    }

    /// `InvalidParameterException`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidParameterException, message)
    }

    /// `ClusterNotFoundException` with ECS's exact message.
    pub fn cluster_not_found() -> Self {
        Self::new(ErrorKind::ClusterNotFoundException, "Cluster not found.")
    }

    /// `ServiceNotFoundException` with ECS's exact message.
    pub fn service_not_found() -> Self {
        Self::new(ErrorKind::ServiceNotFoundException, "Service not found.")
    }

    /// `ServiceNotActiveException` with ECS's exact message.
    pub fn service_not_active() -> Self {
        Self::new(
            ErrorKind::ServiceNotActiveException,
            "Service was not ACTIVE.",
        )
    }

    /// `ResourceNotFoundException`.
    pub fn resource_not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::ResourceNotFoundException, message)
    }

    /// `ServerException` (HTTP 500; clients retry it).
    pub fn server(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::ServerException, message)
    }

    /// `SerializationException` (malformed JSON or wrong member types).
    pub fn serialization(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::SerializationException, message)
    }

    /// An ELBv2 error (`kind` is one of the ELBv2 codes).
    pub fn elb(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self::new(kind, message)
    }

    /// HTTP status for this error.
    pub fn http_status(&self) -> u16 {
        self.kind.http_status()
    }

    /// The response body: `{"__type": ..., "message": ...}`.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({ "__type": self.kind.as_str(), "message": self.message })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_status() {
        assert_eq!(ErrorKind::ServerException.http_status(), 500);
        assert_eq!(ErrorKind::ThrottlingException.http_status(), 400);
        assert_eq!(
            ErrorKind::ClusterContainsTasksException.as_str(),
            "ClusterContainsTasksException"
        );
        // as_str agrees with the serde name for every kind
        for k in [
            ErrorKind::ClientException,
            ErrorKind::InvalidParameterException,
            ErrorKind::ClusterNotFoundException,
            ErrorKind::ResourceNotFoundException,
            ErrorKind::ServerException,
            ErrorKind::SerializationException,
            ErrorKind::UnknownOperationException,
            ErrorKind::MissingAuthenticationTokenException,
            ErrorKind::IncompleteSignatureException,
            ErrorKind::InvalidSignatureException,
            ErrorKind::UnrecognizedClientException,
            ErrorKind::AccessDeniedException,
            ErrorKind::ClusterContainsContainerInstancesException,
            ErrorKind::ClusterContainsServicesException,
            ErrorKind::ClusterContainsTasksException,
            ErrorKind::LimitExceededException,
            ErrorKind::ConflictException,
            ErrorKind::ThrottlingException,
            ErrorKind::TargetNotFoundException,
            ErrorKind::AttributeLimitExceededException,
            ErrorKind::ServiceNotFoundException,
            ErrorKind::ServiceNotActiveException,
            ErrorKind::LoadBalancerNotFound,
            ErrorKind::TargetGroupNotFound,
            ErrorKind::ListenerNotFound,
            ErrorKind::RuleNotFound,
            ErrorKind::DuplicateLoadBalancerName,
            ErrorKind::DuplicateTargetGroupName,
            ErrorKind::DuplicateListener,
            ErrorKind::PriorityInUse,
            ErrorKind::ResourceInUse,
            ErrorKind::ValidationError,
            ErrorKind::InvalidTarget,
            ErrorKind::InvalidConfigurationRequest,
            ErrorKind::OperationNotPermitted,
            ErrorKind::TooManyRules,
            ErrorKind::TooManyTargets,
            ErrorKind::TargetGroupAssociationLimit,
            ErrorKind::IncompatibleProtocols,
            ErrorKind::UnsupportedProtocol,
            ErrorKind::InvalidLoadBalancerAction,
            ErrorKind::TooManyTags,
        ] {
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
        }
        let e = ApiError::cluster_not_found();
        assert_eq!(e.message, "Cluster not found.");
        assert_eq!(
            e.body(),
            serde_json::json!({"__type":"ClusterNotFoundException","message":"Cluster not found."})
        );
        assert_eq!(
            ApiError::invalid("x").kind,
            ErrorKind::InvalidParameterException
        );
    }
}
