// The mend for the Pub/Sub emulator jar 0.8.20 (see `emulators/mend.rs`): its gRPC core calls
// InternalStatus.asRuntimeException(Status, Metadata, boolean), which the gRPC API it bundles
// lacks, so a stream a client cancels is never closed. This class, first on the classpath, has
// both the method the jar's API has and the one its core calls.
package io.grpc;

public final class InternalStatus {
  private InternalStatus() {}

  public static final Metadata.Key<String> MESSAGE_KEY = Status.MESSAGE_KEY;
  public static final Metadata.Key<Status> CODE_KEY = Status.CODE_KEY;

  public static StatusRuntimeException asRuntimeExceptionWithoutStacktrace(
      Status status, Metadata trailers) {
    return new InternalStatusRuntimeException(status, trailers);
  }

  public static StatusRuntimeException asRuntimeException(
      Status status, Metadata trailers, boolean fillInStackTrace) {
    return fillInStackTrace
        ? new StatusRuntimeException(status, trailers)
        : new InternalStatusRuntimeException(status, trailers);
  }
}
