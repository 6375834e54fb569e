package dev.sluice.clients;

import java.util.Optional;
import org.junit.jupiter.api.extension.ExtensionContext;
import org.junit.jupiter.api.extension.TestWatcher;

/**
 * Prints one line per check, "PASS java/NAME" or "FAIL java/NAME: why", which
 * scripts/client-tests.sh counts. Registered on every test class.
 */
public final class Check implements TestWatcher {
  private static String name(ExtensionContext ctx) {
    return "java/" + ctx.getRequiredTestClass().getSimpleName() + "." + ctx.getRequiredTestMethod().getName();
  }

  @Override
  public void testSuccessful(ExtensionContext ctx) {
    System.out.println("PASS " + name(ctx));
    System.out.flush();
  }

  @Override
  public void testFailed(ExtensionContext ctx, Throwable cause) {
    String why = String.valueOf(cause);
    if (why.length() > 600) {
      why = why.substring(0, 600) + "...";
    }
    System.out.println("FAIL " + name(ctx) + ": " + why.replace('\n', ' '));
    System.out.flush();
  }

  @Override
  public void testAborted(ExtensionContext ctx, Throwable cause) {
    testFailed(ctx, cause);
  }

  @Override
  public void testDisabled(ExtensionContext ctx, Optional<String> reason) {
    System.out.println("SKIP " + name(ctx) + ": " + reason.orElse(""));
  }
}
