//! Microsoft Teams: SKELETON — replaced by the Teams helper.
use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;

use crate::channel::{ChannelError, HoldView, Posted, VoteSink};

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamsConfig {
    /// The bot's Microsoft App ID: the audience of callback tokens, the client id for ours.
    pub app_id: String,
    /// File holding the bot's app password (client secret).
    pub app_password_file: PathBuf,
    /// Bot Framework connector base URL for the conversation (the activity's `serviceUrl`).
    pub service_url: String,
    /// The conversation (channel) to post holds in.
    pub conversation_id: String,
    /// Default `https://login.microsoftonline.com/botframework.com/oauth2/v2.0/token`.
    #[serde(default)]
    pub token_url: Option<String>,
    /// Default `https://login.botframework.com/v1/.well-known/openidconfiguration`.
    #[serde(default)]
    pub openid_metadata_url: Option<String>,
    /// Default `https://api.botframework.com`.
    #[serde(default)]
    pub issuer: Option<String>,
}

pub struct TeamsChannel {}

impl TeamsChannel {
    pub async fn new(_config: &TeamsConfig) -> Result<Self, String> {
        Err("teams is not built yet".into())
    }
    pub async fn post(&self, _view: &HoldView) -> Result<Posted, ChannelError> {
        Err(ChannelError::new("teams", "not built"))
    }
    pub async fn update(&self, _posted: &Posted, _view: &HoldView) -> Result<(), ChannelError> {
        Err(ChannelError::new("teams", "not built"))
    }
    pub async fn announce(&self, _posted: &Posted, _view: &HoldView) -> Result<(), ChannelError> {
        Err(ChannelError::new("teams", "not built"))
    }
}

pub fn routes(_channel: Arc<TeamsChannel>, _votes: Arc<dyn VoteSink>) -> axum::Router {
    axum::Router::new()
}
