//! Discord: SKELETON — replaced by the Discord helper.
use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;

use crate::channel::{ChannelError, HoldView, Posted, VoteSink};

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscordConfig {
    pub application_id: String,
    /// File holding the bot token.
    pub bot_token_file: PathBuf,
    /// The application's Ed25519 public key, hex, as the developer portal shows it.
    pub public_key: String,
    /// Channel to post holds in.
    pub channel_id: String,
    /// API base; default Discord's own.
    #[serde(default)]
    pub api_url: Option<String>,
}

pub struct DiscordChannel {}

impl DiscordChannel {
    pub fn new(_config: &DiscordConfig) -> Result<Self, String> {
        Err("discord is not built yet".into())
    }
    pub async fn post(&self, _view: &HoldView) -> Result<Posted, ChannelError> {
        Err(ChannelError::new("discord", "not built"))
    }
    pub async fn update(&self, _posted: &Posted, _view: &HoldView) -> Result<(), ChannelError> {
        Err(ChannelError::new("discord", "not built"))
    }
    pub async fn announce(&self, _posted: &Posted, _view: &HoldView) -> Result<(), ChannelError> {
        Err(ChannelError::new("discord", "not built"))
    }
}

pub fn routes(_channel: Arc<DiscordChannel>, _votes: Arc<dyn VoteSink>) -> axum::Router {
    axum::Router::new()
}
