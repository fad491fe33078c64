//! The gRPC face of [`ServiceApi`]: translation only, no logic.

use orch_api::pb;
use orch_api::pb::api_server::Api;
use tonic::{Request, Response, Status};

use super::services::{ApiError, Applied, ApplyOutcome, ServiceApi};

pub struct ApiRpc {
    api: ServiceApi,
}

impl ApiRpc {
    pub fn new(api: ServiceApi) -> ApiRpc {
        ApiRpc { api }
    }

    /// The service, admitting over TLS only the CLI's (`admin`) and controllers'
    /// certificates: a node's certificate cannot drive the cluster.
    pub fn into_server(self) -> tonic::service::interceptor::InterceptedService<pb::api_server::ApiServer<ApiRpc>, AdminOnly> {
        pb::api_server::ApiServer::with_interceptor(self, admin_only)
    }
}

pub type AdminOnly = fn(Request<()>) -> Result<Request<()>, Status>;

fn admin_only(request: Request<()>) -> Result<Request<()>, Status> {
    orch_api::tls::require_role(request, &[orch_api::tls::Role::Admin, orch_api::tls::Role::Controller])
}

impl ApiRpc {}

fn status(error: ApiError) -> Status {
    match error {
        ApiError::Invalid(_) | ApiError::BadRequest(_) => Status::invalid_argument(error.to_string()),
        ApiError::NotFound(_) => Status::not_found(error.to_string()),
        ApiError::VipsExhausted(_) => Status::resource_exhausted(error.to_string()),
        ApiError::Contended(_) => Status::aborted(error.to_string()),
        ApiError::Store(_) => Status::unavailable(error.to_string()),
        ApiError::Decode(_) | ApiError::Secrets(_) => Status::internal(error.to_string()),
        ApiError::ConfigNotFound(_) | ApiError::NodeNotFound(_) | ApiError::RevisionNotFound(_) => Status::not_found(error.to_string()),
        ApiError::Precondition(_) => Status::failed_precondition(error.to_string()),
        ApiError::NoSecretsKey => Status::failed_precondition(error.to_string()),
    }
}

fn sources(request: pb::ApplyRequest) -> Vec<(String, String)> {
    request.sources.into_iter().map(|s| (s.name, s.content)).collect()
}

fn apply_response(results: Vec<Applied>) -> pb::ApplyResponse {
    let results = results
        .into_iter()
        .map(|Applied { kind, name, outcome }| pb::ApplyResult {
            service: name,
            kind: kind.to_owned(),
            outcome: match outcome {
                ApplyOutcome::Created => pb::ApplyOutcome::Created,
                ApplyOutcome::Configured => pb::ApplyOutcome::Configured,
                ApplyOutcome::Unchanged => pb::ApplyOutcome::Unchanged,
            }
            .into(),
        })
        .collect();
    pb::ApplyResponse { results }
}

fn optional(text: &str) -> Option<&str> {
    (!text.is_empty()).then_some(text)
}

#[tonic::async_trait]
impl Api for ApiRpc {
    async fn apply(&self, request: Request<pb::ApplyRequest>) -> Result<Response<pb::ApplyResponse>, Status> {
        let results = self.api.apply(&sources(request.into_inner())).await.map_err(status)?;
        Ok(Response::new(apply_response(results)))
    }

    async fn apply_dry_run(&self, request: Request<pb::ApplyRequest>) -> Result<Response<pb::ApplyResponse>, Status> {
        let results = self.api.apply_dry_run(&sources(request.into_inner())).await.map_err(status)?;
        Ok(Response::new(apply_response(results)))
    }

    async fn list_configs(&self, request: Request<pb::ListConfigsRequest>) -> Result<Response<pb::ListConfigsResponse>, Status> {
        let configs = self.api.list_configs(request.into_inner().kind()).await.map_err(status)?;
        Ok(Response::new(pb::ListConfigsResponse { configs }))
    }

    async fn delete_config(&self, request: Request<pb::DeleteConfigRequest>) -> Result<Response<pb::DeleteConfigResponse>, Status> {
        let request = request.into_inner();
        self.api.delete_config(request.kind(), &request.name).await.map_err(status)?;
        Ok(Response::new(pb::DeleteConfigResponse {}))
    }

    async fn get_service(&self, request: Request<pb::GetServiceRequest>) -> Result<Response<pb::Service>, Status> {
        self.api.get(&request.into_inner().name).await.map(Response::new).map_err(status)
    }

    async fn list_services(&self, _: Request<pb::ListServicesRequest>) -> Result<Response<pb::ListServicesResponse>, Status> {
        let services = self.api.list().await.map_err(status)?;
        Ok(Response::new(pb::ListServicesResponse { services }))
    }

    async fn delete_service(&self, request: Request<pb::DeleteServiceRequest>) -> Result<Response<pb::DeleteServiceResponse>, Status> {
        let request = request.into_inner();
        let kept_volumes = self.api.delete(&request.name, request.purge_volumes).await.map_err(status)?;
        Ok(Response::new(pb::DeleteServiceResponse { kept_volumes }))
    }

    async fn scale_service(&self, request: Request<pb::ScaleServiceRequest>) -> Result<Response<pb::Service>, Status> {
        let request = request.into_inner();
        self.api.scale(&request.name, request.replicas).await.map(Response::new).map_err(status)
    }

    async fn list_revisions(&self, request: Request<pb::ListRevisionsRequest>) -> Result<Response<pb::ListRevisionsResponse>, Status> {
        let (revisions, current) = self.api.list_revisions(&request.into_inner().service).await.map_err(status)?;
        Ok(Response::new(pb::ListRevisionsResponse { revisions, current }))
    }

    async fn undo_rollout(&self, request: Request<pb::UndoRolloutRequest>) -> Result<Response<pb::Service>, Status> {
        let request = request.into_inner();
        self.api.undo(&request.service, request.to_revision).await.map(Response::new).map_err(status)
    }

    async fn restart_rollout(&self, request: Request<pb::RestartRolloutRequest>) -> Result<Response<pb::Service>, Status> {
        self.api.restart(&request.into_inner().service).await.map(Response::new).map_err(status)
    }

    async fn set_rollout_paused(&self, request: Request<pb::SetRolloutPausedRequest>) -> Result<Response<pb::Service>, Status> {
        let request = request.into_inner();
        self.api.set_paused(&request.service, request.paused).await.map(Response::new).map_err(status)
    }

    async fn rebalance(&self, request: Request<pb::RebalanceRequest>) -> Result<Response<pb::RebalanceResponse>, Status> {
        let services = self.api.request_rebalance(&request.into_inner().service).await.map_err(status)?;
        Ok(Response::new(pb::RebalanceResponse { services }))
    }

    async fn list_replicas(&self, request: Request<pb::ListReplicasRequest>) -> Result<Response<pb::ListReplicasResponse>, Status> {
        let request = request.into_inner();
        let replicas = self.api.list_replicas(optional(&request.service)).await.map_err(status)?;
        Ok(Response::new(pb::ListReplicasResponse { replicas }))
    }

    async fn list_nodes(&self, _: Request<pb::ListNodesRequest>) -> Result<Response<pb::ListNodesResponse>, Status> {
        let nodes = self.api.list_nodes().await.map_err(status)?;
        Ok(Response::new(pb::ListNodesResponse { nodes }))
    }

    async fn set_node_scheduling(&self, request: Request<pb::SetNodeSchedulingRequest>) -> Result<Response<pb::Node>, Status> {
        let request = request.into_inner();
        self.api.set_node_scheduling(&request.node, request.unschedulable, request.drain).await.map(Response::new).map_err(status)
    }

    async fn delete_node(&self, request: Request<pb::DeleteNodeRequest>) -> Result<Response<pb::DeleteNodeResponse>, Status> {
        let request = request.into_inner();
        let replicas = self.api.delete_node(&request.node, request.force).await.map_err(status)?;
        Ok(Response::new(pb::DeleteNodeResponse { replicas }))
    }

    type LogsStream = super::proxy::LogStream;

    async fn logs(&self, request: Request<pb::LogsRequest>) -> Result<Response<Self::LogsStream>, Status> {
        self.api.logs(request.into_inner()).await.map(Response::new)
    }

    type ExecStream = super::proxy::ExecStream;

    async fn exec(&self, request: Request<tonic::Streaming<pb::ExecInput>>) -> Result<Response<Self::ExecStream>, Status> {
        self.api.exec(request.into_inner()).await.map(Response::new)
    }

    async fn chaos(&self, request: Request<pb::ChaosRequest>) -> Result<Response<pb::ChaosResponse>, Status> {
        self.api.chaos(request.into_inner()).await.map(Response::new)
    }

    async fn top(&self, _: Request<pb::TopRequest>) -> Result<Response<pb::TopResponse>, Status> {
        self.api.top().await.map(Response::new)
    }

    async fn topology(&self, _: Request<pb::TopologyRequest>) -> Result<Response<pb::TopologyResponse>, Status> {
        self.api.topology().await.map(Response::new)
    }

    async fn list_events(&self, request: Request<pb::ListEventsRequest>) -> Result<Response<pb::ListEventsResponse>, Status> {
        let request = request.into_inner();
        let events = self.api.list_events(optional(&request.object)).await.map_err(status)?;
        Ok(Response::new(pb::ListEventsResponse { events }))
    }

    async fn backup(&self, _: Request<pb::BackupRequest>) -> Result<Response<pb::StoreSnapshot>, Status> {
        let snapshot = crate::store::take_snapshot(self.api.store().as_ref(), crate::keys::ROOT, "orch backup (through a controller)")
            .await
            .map_err(|e| status(ApiError::Store(e)))?;
        Ok(Response::new(snapshot.to_pb()))
    }

    async fn list_controllers(&self, _: Request<pb::ListControllersRequest>) -> Result<Response<pb::ListControllersResponse>, Status> {
        let listed = crate::presence::list(self.api.store().as_ref()).await.map_err(|e| status(ApiError::Store(e)))?;
        Ok(Response::new(listed))
    }
}
