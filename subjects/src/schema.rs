//! JSON Schemas of every message type, as committed under `subjects/schema/`.
//!
//! `COLONY_BLESS_SCHEMAS=1 cargo test -p subjects` rewrites the files; without
//! it the test fails when they differ from the types.

use schemars::{schema_for, Schema};

use crate::agent::{AgentFrame, AgentInput, AgentOutput, AgentRequest};
use crate::gateway::{ActionRequest, ActionResponse, FetchRequest, FetchResponse};
use crate::goals::{
    GoalAccepted, GoalDecision, GoalEvent, GoalSubmission, GoalView, LoopMsg, Notification, Plan,
    ReviewVerdict,
};
use crate::messages::*;
use crate::ops::{ById, DlqBulk, DlqList, DlqOutcome, Overview, Streams, TaskPage, WhoAmI};
use crate::schedules::{Backfill, Fires, FiresStarted, ScheduleSpec, ScheduleView};
use crate::status::WorkerStatus;

/// (file name, schema) for every message type.
pub fn all() -> Vec<(&'static str, Schema)> {
    vec![
        ("task_submission.v1.json", schema_for!(TaskSubmission)),
        ("shell_input.v1.json", schema_for!(ShellInput)),
        ("shell_output.v1.json", schema_for!(ShellOutput)),
        ("work_item.v1.json", schema_for!(WorkItem)),
        ("task_view.v1.json", schema_for!(TaskView)),
        ("task_accepted.v1.json", schema_for!(TaskAccepted)),
        ("event.v2.json", schema_for!(Event)),
        ("api_error.v1.json", schema_for!(ApiError)),
        ("agent_request.v1.json", schema_for!(AgentRequest)),
        ("agent_frame.v1.json", schema_for!(AgentFrame)),
        ("agent_input.v1.json", schema_for!(AgentInput)),
        ("agent_output.v1.json", schema_for!(AgentOutput)),
        ("action_request.v1.json", schema_for!(ActionRequest)),
        ("action_response.v1.json", schema_for!(ActionResponse)),
        ("fetch_request.v1.json", schema_for!(FetchRequest)),
        ("fetch_response.v1.json", schema_for!(FetchResponse)),
        ("worker_status.v1.json", schema_for!(WorkerStatus)),
        ("goal_submission.v1.json", schema_for!(GoalSubmission)),
        ("goal_accepted.v1.json", schema_for!(GoalAccepted)),
        ("goal_view.v1.json", schema_for!(GoalView)),
        ("goal_event.v1.json", schema_for!(GoalEvent)),
        ("goal_decision.v1.json", schema_for!(GoalDecision)),
        ("plan.v1.json", schema_for!(Plan)),
        ("review_verdict.v1.json", schema_for!(ReviewVerdict)),
        ("loop_msg.v1.json", schema_for!(LoopMsg)),
        ("notification.v1.json", schema_for!(Notification)),
        ("schedule_spec.v1.json", schema_for!(ScheduleSpec)),
        ("schedule_view.v1.json", schema_for!(ScheduleView)),
        ("schedule_fires.v1.json", schema_for!(Fires)),
        ("schedule_backfill.v1.json", schema_for!(Backfill)),
        ("schedule_fires_started.v1.json", schema_for!(FiresStarted)),
        ("whoami.v1.json", schema_for!(WhoAmI)),
        ("by_id.v1.json", schema_for!(ById)),
        ("overview.v1.json", schema_for!(Overview)),
        ("streams.v1.json", schema_for!(Streams)),
        ("task_page.v1.json", schema_for!(TaskPage)),
        ("dlq_list.v1.json", schema_for!(DlqList)),
        ("dlq_outcome.v1.json", schema_for!(DlqOutcome)),
        ("dlq_bulk.v1.json", schema_for!(DlqBulk)),
    ]
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    #[test]
    fn committed_schemas_match_the_types() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("schema");
        let bless = std::env::var_os("COLONY_BLESS_SCHEMAS").is_some();
        let mut drifted = Vec::new();
        for (name, schema) in super::all() {
            let text = serde_json::to_string_pretty(&schema).expect("schema serialises") + "\n";
            let path = dir.join(name);
            if bless {
                std::fs::create_dir_all(&dir).expect("create schema dir");
                std::fs::write(&path, &text).expect("write schema");
            } else if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
                drifted.push(name);
            }
        }
        assert!(
            drifted.is_empty(),
            "schemas out of date: {drifted:?}; run COLONY_BLESS_SCHEMAS=1 cargo test -p subjects and commit subjects/schema/"
        );
        // Nothing stale is left behind either. (`openapi.json` is the HTTP
        // API's description, written and checked by the ingress's test.)
        let mut known: Vec<_> = super::all().into_iter().map(|(n, _)| n).collect();
        known.push("openapi.json");
        for entry in std::fs::read_dir(&dir).expect("schema dir") {
            let name = entry
                .expect("dir entry")
                .file_name()
                .into_string()
                .expect("utf-8 name");
            assert!(known.contains(&name.as_str()), "stale schema file {name}");
        }
    }
}
