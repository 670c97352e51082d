//! Cancellation (by id, by disconnect) and the bounded queue.

use std::time::{Duration, Instant};

use easel_e2e::*;
use easel_proto::v1 as pb;
use futures::StreamExt;
use tonic::Code;

/// A job far too long to finish during a test: it only ends by being cancelled.
fn endless_request() -> pb::GenerateRequest {
    GenerateRequestBuilder::new("a very long job")
        .fixture("sd1-tiny")
        .steps(50_000)
        .size(256, 256)
        .seed(1)
        .build()
}

fn long_daemon(extra: &[(&str, &str)]) -> Daemon {
    let mut env = vec![("EASEL_MAX_STEPS", "100000")];
    env.extend_from_slice(extra);
    Daemon::start_with(&env)
}

type Events = tonic::Streaming<pb::GenerateEvent>;

async fn wait_idle(daemon: &Daemon) {
    let mut client = daemon.client().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = client.get_status(pb::StatusRequest {}).await.unwrap().into_inner();
        if status.running_jobs == 0 && status.queued_jobs == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "the job was not stopped: {status:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_by_id_stops_a_running_job_at_the_next_step() {
    let daemon = long_daemon(&[]);
    let mut client = daemon.client().await;
    let mut stream = client.generate(endless_request()).await.unwrap().into_inner();
    let job_id = wait_for_progress(&mut stream).await;
    let output = daemon.easel(&["cancel", &job_id]);
    assert!(output.status.success(), "{}", stderr(&output));
    let ended = loop {
        match stream.next().await {
            Some(Ok(_)) => continue,
            Some(Err(status)) => break status,
            None => panic!("the stream ended without a status"),
        }
    };
    assert_eq!(ended.code(), Code::Cancelled, "{ended:?}");
    wait_idle(&daemon).await;
    // An unknown id is a clear error.
    let output = daemon.easel(&["cancel", "no-such-job"]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("no-such-job"), "{}", stderr(&output));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_disconnects_cancels_its_job() {
    let daemon = long_daemon(&[]);
    {
        let mut client = daemon.client().await;
        let mut stream = client.generate(endless_request()).await.unwrap().into_inner();
        wait_for_progress(&mut stream).await;
        // Dropping the stream and the client closes the call, as a killed CLI would.
    }
    wait_idle(&daemon).await;
    assert!(
        daemon.log_text().contains("cancelled"),
        "the daemon logs why the job ended:\n{}",
        daemon.log_text()
    );
}

async fn first_queued(stream: &mut Events) -> pb::Queued {
    match stream.next().await {
        Some(Ok(pb::GenerateEvent {
            event: Some(pb::generate_event::Event::Queued(queued)),
        })) => queued,
        other => panic!("a job's first event is Queued, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_queue_answers_resource_exhausted_and_queued_jobs_learn_their_position() {
    let daemon = long_daemon(&[("EASEL_MAX_QUEUE", "2")]);
    let mut client = daemon.client().await;
    let mut running = client.generate(endless_request()).await.unwrap().into_inner();
    let running_id = wait_for_progress(&mut running).await;

    let mut second = client.generate(endless_request()).await.unwrap().into_inner();
    let second_queued = first_queued(&mut second).await;
    assert_eq!(second_queued.position, 1, "one job runs ahead of it");
    let mut third = client.generate(endless_request()).await.unwrap().into_inner();
    let third_queued = first_queued(&mut third).await;
    assert_eq!(third_queued.position, 2);

    let refused = client
        .generate(endless_request())
        .await
        .expect_err("the queue holds two waiting jobs");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("queue is full"), "{}", refused.message());

    // Cancelling the second job moves the third up, and it is told so.
    let mut control = daemon.client().await;
    control
        .cancel(pb::CancelRequest {
            job_id: second_queued.job_id,
        })
        .await
        .unwrap();
    let ended = second
        .next()
        .await
        .expect("an end")
        .expect_err("a cancelled job ends with a status");
    assert_eq!(ended.code(), Code::Cancelled);
    let moved = first_queued(&mut third).await;
    assert_eq!(moved.position, 1);
    assert_eq!(moved.job_id, third_queued.job_id);

    for id in [running_id, third_queued.job_id] {
        control.cancel(pb::CancelRequest { job_id: id }).await.unwrap();
    }
    wait_idle(&daemon).await;
}
