// The third mend for the Pub/Sub emulator jar 0.8.20 (see `emulators/mend.rs`). Each
// StreamingPull stream has a pusher thread that pulls from the subscription's backlog and sends
// what it got; the jar's pulls at most 100 messages (its MessageBacklog's cap per pull) and then
// sleeps 50 ms, whatever it got and whether or not the client reads. So one emulator stream
// carries at most 2,000 messages a second (about 1,600-2,000 measured on loopback), where a
// Pub/Sub stream carries about 10 MB/s (some 40,000 messages of 256 B), and it pulls on while
// the client's flow control has stopped reading, so the messages it leases wait in the server's
// send buffer (with large messages they filled its direct memory: OutOfMemoryError).
//
// This file is a stub of the jar's FakePubsubServer: only its inner class is kept (javac cannot
// compile a class of that name beside the jar's). The inner class, first on the classpath in
// place of the jar's, does what the jar's does, with two changes:
// - after a pull that returned messages it pulls again at once; it sleeps 50 ms only after an
//   empty one, as the jar's always does (so a message published to an idle stream still waits
//   up to 50 ms, as before);
// - it pulls only while the stream is ready for more (gRPC's isReady: the client reads, and
//   what was sent before has left the server's buffer), as Pub/Sub leases a stream only what its
//   client's flow control takes; otherwise it waits 2 ms and looks again.
// It reaches the jar's private members by reflection.
package com.google.cloud.pubsub.testing.v1;

import com.google.pubsub.v1.StreamingPullResponse;
import com.google.pubsub.v1.ReceivedMessage;
import com.google.pubsub.v1.Subscription;
import io.grpc.Status;
import io.grpc.StatusException;
import io.grpc.stub.CallStreamObserver;
import io.grpc.stub.ServerCallStreamObserver;
import io.grpc.stub.StreamObserver;
import java.lang.reflect.Field;
import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Method;
import java.time.Duration;
import java.util.List;
import java.util.Map;
import java.util.concurrent.Future;
import java.util.concurrent.atomic.AtomicInteger;

class FakePubsubServer {
  class StreamingPullPusher implements Runnable {
    /** What the jar's pusher asks of each pull (the backlog hands out at most 100). */
    private static final int PULL = 1000;
    private static final long IDLE_SLEEP_MS = 50;
    private static final long NOT_READY_SLEEP_MS = 2;

    private final long streamId;
    private final StreamObserver<StreamingPullResponse> responseObserver;
    private final Future<String> subscriptionNameFuture;
    private final Future<Void> terminationFuture;
    private final AtomicInteger deadlineSecs;
    private final RpcDeadline streamDeadline;
    private final AckConfirmationsAggregator ackConfirmationsAggregator;
    private String subscriptionName;
    private String subscriptionId;

    private final Method registerHangingPull = method(FakePubsubServer.class, "registerHangingPull");
    private final Method unregisterHangingPull =
        method(FakePubsubServer.class, "unregisterHangingPull");
    private final Method isResetting = method(FakePubsubServer.class, "isResetting");
    private final Field subscriptions = field(FakePubsubServer.class, "subscriptions");
    private final Class<?> subscriptionData = nested("FakePubsubServer$SubscriptionData");
    private final Method getBacklog = method(subscriptionData, "getBacklog");
    private final Method getPushConfig = method(subscriptionData, "getPushConfig");
    private final Method getDetached = method(subscriptionData, "getDetached");
    private final Field subscription = field(subscriptionData, "subscription");

    StreamingPullPusher(
        long streamId,
        StreamObserver<StreamingPullResponse> responseObserver,
        Future<String> subscriptionNameFuture,
        Future<Void> terminationFuture,
        AtomicInteger deadlineSecs,
        RpcDeadline streamDeadline,
        AckConfirmationsAggregator ackConfirmationsAggregator) {
      this.streamId = streamId;
      this.responseObserver = responseObserver;
      this.subscriptionNameFuture = subscriptionNameFuture;
      this.terminationFuture = terminationFuture;
      this.deadlineSecs = deadlineSecs;
      this.streamDeadline = streamDeadline;
      this.ackConfirmationsAggregator = ackConfirmationsAggregator;
    }

    @Override
    public void run() {
      boolean completed = false;
      try {
        invoke(registerHangingPull, FakePubsubServer.this);
        completed = push();
      } catch (InterruptedException e) {
        responseObserver.onError(Status.CANCELLED.withCause(e).asException());
      } catch (Throwable t) {
        responseObserver.onError(Status.fromThrowable(t).asException());
      } finally {
        finish();
      }
      if (completed) {
        responseObserver.onCompleted();
      }
    }

    /** Pushes until the client ends the stream: true when it did, to be completed after. */
    private boolean push() throws Exception {
      while (!subscriptionNameFuture.isDone()) {
        checkReset();
        Thread.sleep(IDLE_SLEEP_MS);
      }
      subscriptionName = subscriptionNameFuture.get();
      if (subscriptionName == null) {
        responseObserver.onCompleted();
        return false;
      }
      subscriptionId = subscriptionName.substring(subscriptionName.lastIndexOf('/') + 1);
      while (!terminationFuture.isDone()) {
        checkReset();
        Object data = subscriptionData();
        checkSubscription(data);
        if (!ready()) {
          Thread.sleep(NOT_READY_SLEEP_MS);
          continue;
        }
        Backlog backlog = (Backlog) invoke(getBacklog, data);
        List<ReceivedMessage> messages =
            backlog.streamingPull(streamId, PULL, Duration.ofSeconds(deadlineSecs.get()));
        if (messages.isEmpty()) {
          Thread.sleep(IDLE_SLEEP_MS);
          continue;
        }
        Subscription config = (Subscription) subscription.get(data);
        StreamingPullResponse.SubscriptionProperties.Builder properties =
            StreamingPullResponse.SubscriptionProperties.newBuilder()
                .setMessageOrderingEnabled(config.getEnableMessageOrdering())
                .setExactlyOnceDeliveryEnabled(config.getEnableExactlyOnceDelivery());
        responseObserver.onNext(
            responseBuilder()
                .setSubscriptionProperties(properties.build())
                .addAllReceivedMessages(messages)
                .build());
      }
      terminationFuture.get();
      return true;
    }

    /**
     * Whether the stream takes more: the jar's pusher never asks. A cancelled stream is an
     * error, as the jar's next send to it would be.
     */
    private boolean ready() throws StatusException {
      if (responseObserver instanceof ServerCallStreamObserver
          && ((ServerCallStreamObserver<?>) responseObserver).isCancelled()) {
        throw Status.CANCELLED.withDescription("the client cancelled the stream").asException();
      }
      return !(responseObserver instanceof CallStreamObserver)
          || ((CallStreamObserver<?>) responseObserver).isReady();
    }

    /** What the jar's `finally` does: the stream no longer hangs, and its backlog knows. */
    private void finish() {
      try {
        invoke(unregisterHangingPull, FakePubsubServer.this);
        if (subscriptionName != null) {
          Object data = subscriptionData();
          if (data != null) {
            ((Backlog) invoke(getBacklog, data)).onStreamingPullCompleted(streamId);
          }
        }
      } catch (Exception e) {
        System.err.println("[testkit mend] StreamingPullPusher: ending the stream failed");
        e.printStackTrace();
      }
    }

    private Object subscriptionData() throws IllegalAccessException {
      return ((Map<?, ?>) subscriptions.get(FakePubsubServer.this)).get(subscriptionName);
    }

    private void checkReset() throws Exception {
      if ((Boolean) invoke(isResetting, FakePubsubServer.this)) {
        throw Status.ABORTED.withDescription("emulator is being reset").asException();
      }
    }

    private void checkSubscription(Object data) throws Exception {
      if (data == null) {
        throw Status.NOT_FOUND
            .withDescription(
                String.format("Subscription does not exist (resource=%s)", subscriptionId))
            .asException();
      }
      com.google.pubsub.v1.PushConfig push =
          (com.google.pubsub.v1.PushConfig) invoke(getPushConfig, data);
      if (!push.getPushEndpoint().isEmpty()) {
        throw Status.FAILED_PRECONDITION
            .withDescription(
                String.format(
                    "Subscription is a push subscription: (resource=%s)", subscriptionName))
            .asException();
      }
      if ((Boolean) invoke(getDetached, data)) {
        throw Status.FAILED_PRECONDITION.withDescription("Subscription is detached.").asException();
      }
      if (streamDeadline.isExpired()) {
        throw Status.DEADLINE_EXCEEDED.asException();
      }
    }

    /** The jar's: the acks and deadline changes confirmed since the last response, cleared. */
    private synchronized StreamingPullResponse.Builder responseBuilder() {
      StreamingPullResponse.Builder response = StreamingPullResponse.newBuilder();
      AckConfirmations acks = ackConfirmationsAggregator.getAckConfirmationsForAcks();
      response
          .getAcknowledgeConfirmationBuilder()
          .addAllAckIds(acks.getSuccessfullyProcessedAckIds())
          .addAllInvalidAckIds(acks.getInvalidAckIds())
          .addAllUnorderedAckIds(acks.getUnorderedAckIds());
      AckConfirmations modAcks = ackConfirmationsAggregator.getAckConfirmationsForModAcks();
      response
          .getModifyAckDeadlineConfirmationBuilder()
          .addAllAckIds(modAcks.getSuccessfullyProcessedAckIds())
          .addAllInvalidAckIds(modAcks.getInvalidAckIds());
      ackConfirmationsAggregator.clearAckConfirmationsForAcknowledgements();
      ackConfirmationsAggregator.clearAckConfirmationsForModAcknowledgements();
      return response;
    }

    private Object invoke(Method m, Object target) throws Exception {
      try {
        return m.invoke(target);
      } catch (InvocationTargetException e) {
        Throwable cause = e.getCause();
        if (cause instanceof Exception) {
          throw (Exception) cause;
        }
        throw e;
      }
    }

    private Class<?> nested(String name) {
      try {
        return Class.forName(FakePubsubServer.class.getPackage().getName() + "." + name);
      } catch (ClassNotFoundException e) {
        throw new IllegalStateException("the mend does not fit this jar", e);
      }
    }

    private Field field(Class<?> owner, String name) {
      try {
        Field f = owner.getDeclaredField(name);
        f.setAccessible(true);
        return f;
      } catch (NoSuchFieldException e) {
        throw new IllegalStateException("the mend does not fit this jar", e);
      }
    }

    private Method method(Class<?> owner, String name) {
      try {
        Method m = owner.getDeclaredMethod(name);
        m.setAccessible(true);
        return m;
      } catch (NoSuchMethodException e) {
        throw new IllegalStateException("the mend does not fit this jar", e);
      }
    }
  }
}
