use std::sync::Mutex;

use tgb_bus::{ErrorClass, HandlerError};
use tgb_proto::{BusEvent, Event, EventMeta, Origin, PlannerTaskProgressed, TgCommentAdded};

use crate::support::comment;

/// Records what it was called with.
#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<String>>,
}

impl Recorder {
    async fn comment_added(&self, e: &TgCommentAdded) -> Result<&'static str, HandlerError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("comment {}", e.body));
        Ok("commented")
    }

    async fn task_progressed(
        &self,
        e: &PlannerTaskProgressed,
    ) -> Result<&'static str, HandlerError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("task on {}", e.tg_case_id));
        Ok("progressed")
    }
}

tgb_bus::routes! {
    /// A consumer of two events.
    Routes for Recorder -> &'static str {
        TgCommentAdded => "D4", comment_added,
        PlannerTaskProgressed => "P2", task_progressed,
    }
}

#[tokio::test]
async fn one_table_gives_the_subjects_the_flows_and_the_dispatch() {
    assert_eq!(
        Routes::SUBJECTS,
        &[TgCommentAdded::SUBJECT, PlannerTaskProgressed::SUBJECT]
    );
    let recorder = Recorder::default();
    let comment: Event = comment("C-1", "hello").into();
    let mut progressed = PlannerTaskProgressed {
        tg_case_id: "C-2".into(),
        ..Default::default()
    };
    *progressed.meta_mut() = EventMeta::new(Origin::Planner);
    let progressed: Event = progressed.into();

    assert_eq!(Routes::flow_of(&comment), Some("D4"));
    assert_eq!(Routes::flow_of(&progressed), Some("P2"));
    assert_eq!(
        Routes::dispatch(&recorder, &comment).await.unwrap(),
        "commented"
    );
    assert_eq!(
        Routes::dispatch(&recorder, &progressed).await.unwrap(),
        "progressed"
    );
    assert_eq!(
        *recorder.calls.lock().unwrap(),
        vec!["comment hello", "task on C-2"]
    );
}

#[tokio::test]
async fn an_event_outside_the_table_is_a_permanent_error_naming_it() {
    let recorder = Recorder::default();
    let mut other = tgb_proto::TgCaseOpened::default();
    *other.meta_mut() = EventMeta::new(Origin::Tg);
    let other: Event = other.into();
    assert_eq!(Routes::flow_of(&other), None);
    let err = Routes::dispatch(&recorder, &other).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Permanent);
    assert_eq!(
        err.reason(),
        format!(
            "TgCaseOpened ({}) has no route in Routes",
            tgb_proto::TgCaseOpened::SUBJECT
        )
    );
    assert!(recorder.calls.lock().unwrap().is_empty());
}
