//! Every error the daemon returns, mapped to the gRPC status code DESIGN.md assigns it, with
//! the whole cause chain as a message a person can act on. The one place codes are chosen.

use tonic::Status;

use crate::catalog::CatalogError;
use crate::catalog::hub::HubError;
use crate::catalog::registry::RegistryError;
use crate::catalog::store::archive::ArchiveError;
use crate::catalog::store::{BundleError, StoreError};
use crate::error_chain;
use crate::jobs::JobError;
use crate::model::ModelError;

/// A job's error: a bad request, a missing or broken model, a full queue or memory budget, a
/// cancel, a shutdown — or an internal failure.
pub fn job_status(error: &JobError) -> Status {
    let message = error_chain(error);
    match error {
        JobError::InvalidArgument(_) => Status::invalid_argument(message),
        JobError::Registry(e) => registry_status(e, message),
        JobError::Model(ModelError::NotFound { .. }) => Status::not_found(message),
        JobError::Model(_) | JobError::LoadFailed(_) => Status::failed_precondition(message),
        JobError::QueueFull(_) | JobError::OutOfMemory(_) => Status::resource_exhausted(message),
        JobError::Cancelled => Status::cancelled(message),
        JobError::ShuttingDown => Status::unavailable(message),
        JobError::Generation(_) => Status::internal(message),
    }
}

/// A model name or folder that does not resolve: NOT_FOUND when it is not there, else
/// FAILED_PRECONDITION (it is there but broken).
pub fn registry_status(error: &RegistryError, message: String) -> Status {
    match error {
        RegistryError::UnknownName { .. } | RegistryError::Model(ModelError::NotFound { .. }) => {
            Status::not_found(message)
        }
        RegistryError::RelativePath { .. } => Status::invalid_argument(message),
        RegistryError::Model(_) | RegistryError::Builtin(_) => Status::failed_precondition(message),
    }
}

/// An import, pull, show or removal that failed.
pub fn catalog_status(error: &CatalogError) -> Status {
    let message = error_chain(error);
    match error {
        CatalogError::Store(e) => store_status(e, message),
        CatalogError::Describe(_) | CatalogError::InUse { .. } => Status::failed_precondition(message),
        CatalogError::Task(_) => Status::internal(message),
        CatalogError::AlreadyPulling { .. } => Status::aborted(message),
        CatalogError::InvalidArgument(_) => Status::invalid_argument(message),
        CatalogError::Registry(e) => registry_status(e, message),
        CatalogError::Hub(e) => hub_status(e, message),
    }
}

fn store_status(error: &StoreError, message: String) -> Status {
    match error {
        StoreError::Archive(ArchiveError::NoSpace { .. }) => Status::resource_exhausted(message),
        StoreError::AlreadyInstalled { .. } => Status::already_exists(message),
        StoreError::NotInstalled { .. } => Status::not_found(message),
        StoreError::Invalid { .. } => Status::failed_precondition(message),
        StoreError::Cancelled => Status::cancelled(message),
        StoreError::Io { .. } => Status::internal(message),
        // A flat bundle whose graphs do not open or run is a broken model; the rest is a
        // malformed bundle or a flag that does not fit it.
        StoreError::Bundle { error, .. } if error.is_broken_model() => Status::failed_precondition(message),
        StoreError::Bundle {
            error: BundleError::Io { .. },
            ..
        } => Status::internal(message),
        StoreError::Bundle { .. } => Status::invalid_argument(message),
        StoreError::InvalidName { .. }
        | StoreError::DerivedName { .. }
        | StoreError::BuiltinName { .. }
        | StoreError::SourceMissing { .. }
        | StoreError::SpecialSource { .. }
        | StoreError::NotAModel { .. }
        | StoreError::Archive(_) => Status::invalid_argument(message),
    }
}

fn hub_status(error: &HubError, message: String) -> Status {
    match error {
        HubError::InvalidReference { .. } | HubError::InvalidEndpoint { .. } => Status::invalid_argument(message),
        HubError::Unauthorized { .. } | HubError::Gated { .. } => Status::permission_denied(message),
        HubError::NotFound { .. } | HubError::NotFoundOrPrivate { .. } | HubError::FileNotFound { .. } => {
            Status::not_found(message)
        }
        HubError::NotOnnxModel { .. } => Status::failed_precondition(message),
        HubError::SizeMismatch { .. } | HubError::HashMismatch { .. } => Status::data_loss(message),
        HubError::Cancelled => Status::cancelled(message),
        // The network, the hub or the local disk: worth trying again later.
        HubError::Unreachable { .. }
        | HubError::Server { .. }
        | HubError::UnexpectedStatus { .. }
        | HubError::BadListing { .. }
        | HubError::Request { .. }
        | HubError::Interrupted { .. }
        | HubError::Io { .. }
        | HubError::Client(_) => Status::unavailable(message),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use tonic::Code;

    use super::*;
    use crate::generation::GenerationError;

    #[test]
    fn each_kind_of_error_gets_the_code_the_table_gives_it() {
        let unknown = || RegistryError::UnknownName {
            name: "x".into(),
            models_dir: PathBuf::from("/m"),
        };
        let missing_folder = || ModelError::NotFound {
            path: PathBuf::from("/nowhere"),
        };
        let broken = || ModelError::Incompatible {
            model: "m".into(),
            message: "bad".into(),
        };
        let jobs = [
            (JobError::InvalidArgument("steps".into()), Code::InvalidArgument),
            (JobError::Registry(unknown()), Code::NotFound),
            (
                JobError::Registry(RegistryError::Model(missing_folder())),
                Code::NotFound,
            ),
            (
                JobError::Registry(RegistryError::Model(broken())),
                Code::FailedPrecondition,
            ),
            (
                JobError::Registry(RegistryError::RelativePath {
                    reference: "../../etc".into(),
                }),
                Code::InvalidArgument,
            ),
            (JobError::Model(missing_folder()), Code::NotFound),
            (JobError::Model(broken()), Code::FailedPrecondition),
            (JobError::LoadFailed("x".into()), Code::FailedPrecondition),
            (JobError::QueueFull(16), Code::ResourceExhausted),
            (JobError::OutOfMemory("x".into()), Code::ResourceExhausted),
            (JobError::Cancelled, Code::Cancelled),
            (JobError::ShuttingDown, Code::Unavailable),
            (JobError::Generation(GenerationError::Cancelled), Code::Internal),
        ];
        for (error, code) in jobs {
            assert_eq!(job_status(&error).code(), code, "{error}");
        }
        let hub = |error: HubError| CatalogError::Hub(error);
        let bundle = |error: BundleError| {
            CatalogError::Store(StoreError::Bundle {
                source_path: PathBuf::from("/m"),
                error,
            })
        };
        let catalog = [
            (CatalogError::Registry(unknown()), Code::NotFound),
            (CatalogError::InUse { name: "m".into() }, Code::FailedPrecondition),
            (CatalogError::InvalidArgument("relative".into()), Code::InvalidArgument),
            (CatalogError::AlreadyPulling { repo: "a/b".into() }, Code::Aborted),
            (CatalogError::Task("panicked".into()), Code::Internal),
            (
                CatalogError::Store(StoreError::AlreadyInstalled { name: "m".into() }),
                Code::AlreadyExists,
            ),
            (
                CatalogError::Store(StoreError::NotInstalled {
                    name: "m".into(),
                    models_dir: PathBuf::from("/m"),
                }),
                Code::NotFound,
            ),
            (CatalogError::Store(StoreError::Cancelled), Code::Cancelled),
            (
                CatalogError::Store(StoreError::InvalidName { name: "..".into() }),
                Code::InvalidArgument,
            ),
            (
                bundle(BundleError::Missing {
                    missing: "unet.onnx".into(),
                }),
                Code::InvalidArgument,
            ),
            (
                bundle(BundleError::FlagsOnOptimum {
                    flags: "--family".into(),
                }),
                Code::InvalidArgument,
            ),
            (
                bundle(BundleError::Onnx {
                    part: "unet",
                    file: "unet.onnx".into(),
                    source: Box::new(crate::model::onnx::OnnxError::Incompatible {
                        model: "unet".into(),
                        message: "x".into(),
                    }),
                }),
                Code::FailedPrecondition,
            ),
            (hub(HubError::Cancelled), Code::Cancelled),
            (
                hub(HubError::Gated {
                    repo: "a/b".into(),
                    status: 403,
                }),
                Code::PermissionDenied,
            ),
            (
                hub(HubError::SizeMismatch {
                    path: "unet/model.onnx".into(),
                    expected: 2,
                    actual: 1,
                }),
                Code::DataLoss,
            ),
            (
                hub(HubError::Interrupted {
                    path: "unet/model.onnx".into(),
                    cause: "reset".into(),
                    retries: 5,
                }),
                Code::Unavailable,
            ),
        ];
        for (error, code) in catalog {
            assert_eq!(catalog_status(&error).code(), code, "{error}");
        }
    }
}
