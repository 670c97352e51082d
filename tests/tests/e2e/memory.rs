//! Working memory: a request is held against the budget before it queues, counted while it
//! runs, and its memory goes back to the system when it ends.

use easel_e2e::*;
use easel_proto::v1 as pb;
use futures::StreamExt;

/// The daemon's resident memory once it is below `limit`, or as it is after 10 s: the worker
/// hands memory back just after it reports the job's end.
async fn rss_settling_below(daemon: &Daemon, limit: u64) -> u64 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let rss = daemon.rss();
        if rss < limit || std::time::Instant::now() > deadline {
            return rss;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_cannot_fit_the_budget_is_refused_before_it_queues() {
    let daemon = Daemon::start_with(&[("EASEL_MEMORY_BUDGET", "1GiB")]);
    let mut client = daemon.client().await;
    // The built-in model at 1024²: its UNet attends over 16 384 cells; gigabytes of scores.
    let large = GenerateRequestBuilder::new("a red circle")
        .size(1024, 1024)
        .steps(1)
        .build();
    let status = generate(&mut client, large).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status}");
    let message = status.message();
    assert!(
        message.contains("working memory") && message.contains("memory_budget"),
        "{message}"
    );
    let queue = client.get_status(pb::StatusRequest {}).await.unwrap().into_inner();
    assert_eq!((queue.queued_jobs, queue.running_jobs), (0, 0), "nothing queued");
    let small = GenerateRequestBuilder::new("a red circle").steps(1).build();
    assert_eq!(
        generate(&mut client, small).await.unwrap().len(),
        1,
        "the daemon still generates"
    );
}

/// A daemon whose built-in model is loaded for good, a client, and its resident memory then.
async fn warm_daemon() -> (Daemon, easel_client::EaselClient<easel_client::Channel>, u64) {
    let daemon = Daemon::start_with(&[("EASEL_KEEP_ALIVE", "-1")]);
    let mut client = daemon.client().await;
    generate(&mut client, GenerateRequestBuilder::new("warm").steps(1))
        .await
        .unwrap();
    let before = daemon.rss();
    (daemon, client, before)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn working_memory_is_shown_while_a_job_runs_and_returned_after_it() {
    let (daemon, mut client, before) = warm_daemon().await;

    // 768×512 on the built-in model: a peak of gigabytes (its attention), for a few seconds.
    let request = GenerateRequestBuilder::new("a big red circle")
        .size(768, 512)
        .steps(3)
        .build();
    let mut stream = client.generate(request).await.unwrap().into_inner();
    wait_for_progress(&mut stream).await;
    let running = client
        .list_running(pb::ListRunningRequest {})
        .await
        .unwrap()
        .into_inner();
    let model = &running.models[0];
    assert!(model.working_memory_bytes > 100 << 20, "{model:?}");
    assert!(running.used_bytes >= model.memory_bytes + model.working_memory_bytes);
    let status = client.get_status(pb::StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(status.working_memory_bytes, model.working_memory_bytes);
    while let Some(event) = stream.next().await {
        event.unwrap();
    }

    let running = client
        .list_running(pb::ListRunningRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(running.models[0].working_memory_bytes, 0, "released with the job");
    // The arena and the allocator hand the job's gigabytes back.
    let after = rss_settling_below(&daemon, before + (400 << 20)).await;
    assert!(
        after < before + (400 << 20),
        "resident memory {before} B before the job, {after} B after"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_jobs_memory_comes_back_too() {
    let (daemon, mut client, before) = warm_daemon().await;

    // Cancelled after its first steps: the job never reaches its last step (whose run hands
    // the arena back), yet the memory must return.
    let request = GenerateRequestBuilder::new("a big red circle")
        .size(768, 512)
        .steps(200)
        .build();
    let mut stream = client.generate(request).await.unwrap().into_inner();
    let job_id = wait_for_progress(&mut stream).await;
    client.cancel(pb::CancelRequest { job_id }).await.unwrap();
    while let Some(event) = stream.next().await {
        if let Err(status) = event {
            assert_eq!(status.code(), tonic::Code::Cancelled, "{status}");
        }
    }
    let status = client.get_status(pb::StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(status.running_jobs, 0);
    let after = rss_settling_below(&daemon, before + (400 << 20)).await;
    assert!(
        after < before + (400 << 20),
        "resident memory {before} B before the job, {after} B after it was cancelled"
    );
}
