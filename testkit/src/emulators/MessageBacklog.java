// The second mend for the Pub/Sub emulator jar 0.8.20 (see `emulators/mend.rs`). Each
// subscription's MessageBacklog runs a task every second that hands back the messages whose
// retry-policy backoff is over. For each ack id due it looks up the delivery; an ack id no
// longer outstanding (acked after its lease ran out, or due twice, as the jar can schedule one
// ack id at two times) makes that a NullPointerException. The task catches only
// StatusException, so its executor drops it without a word, and from then on no backed-off
// message of that subscription is delivered again.
//
// This file is a stub of the jar's MessageBacklog: only its nested class is kept (javac cannot
// compile a class of that name beside the jar's). The nested class, first on the classpath in
// place of the jar's, drops the ack ids that are no longer outstanding (nothing is left to hand
// back for them) before the jar's method runs, and logs any other failure instead of dying of
// it. It reaches the jar's private members by reflection.
package com.google.cloud.pubsub.testing.v1;

import java.lang.reflect.Field;
import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Method;
import java.util.Iterator;
import java.util.Map;
import java.util.Set;
import java.util.SortedMap;

class MessageBacklog {
  class ExpireOutstandingMessagesRunnable implements Runnable {
    private final Field delivered = field("delivered");
    private final Field delayed = field("delayedMessagesByTime");
    private final Method expire = method("expireOutstandingMessages");

    @Override
    public void run() {
      MessageBacklog backlog = MessageBacklog.this;
      try {
        // The backlog's methods synchronize on it: so does this.
        synchronized (backlog) {
          int dropped = dropNotOutstanding(backlog);
          if (dropped > 0) {
            System.err.println(
                "[testkit mend] MessageBacklog: dropped " + dropped + " ack ids due for"
                    + " redelivery that were no longer outstanding");
          }
          expire.invoke(backlog);
        }
      } catch (InvocationTargetException e) {
        System.err.println("[testkit mend] MessageBacklog: expiring outstanding messages failed");
        e.getCause().printStackTrace();
      } catch (ReflectiveOperationException | RuntimeException e) {
        System.err.println("[testkit mend] MessageBacklog: expiring outstanding messages failed");
        e.printStackTrace();
      }
    }

    /** Removes from `delayedMessagesByTime` every ack id that `delivered` no longer holds. */
    @SuppressWarnings("unchecked")
    private int dropNotOutstanding(MessageBacklog backlog) throws IllegalAccessException {
      Map<String, ?> outstanding = (Map<String, ?>) delivered.get(backlog);
      SortedMap<Long, Set<String>> due = (SortedMap<Long, Set<String>>) delayed.get(backlog);
      int dropped = 0;
      for (Iterator<Set<String>> times = due.values().iterator(); times.hasNext(); ) {
        Set<String> ackIds = times.next();
        for (Iterator<String> ids = ackIds.iterator(); ids.hasNext(); ) {
          if (!outstanding.containsKey(ids.next())) {
            ids.remove();
            dropped++;
          }
        }
        if (ackIds.isEmpty()) {
          times.remove();
        }
      }
      return dropped;
    }

    private Field field(String name) {
      try {
        Field f = MessageBacklog.class.getDeclaredField(name);
        f.setAccessible(true);
        return f;
      } catch (NoSuchFieldException e) {
        throw new IllegalStateException("the mend does not fit this jar", e);
      }
    }

    private Method method(String name) {
      try {
        Method m = MessageBacklog.class.getDeclaredMethod(name);
        m.setAccessible(true);
        return m;
      } catch (NoSuchMethodException e) {
        throw new IllegalStateException("the mend does not fit this jar", e);
      }
    }
  }
}
